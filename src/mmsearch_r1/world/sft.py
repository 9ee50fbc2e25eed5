"""SFT conversations for the world: the protocol on both kinds of question, with a deliberately imperfect choice
of when to search, written by running the real search tools and the rollout's own prompts.

The reasoning starts with what the model recognises: the entity's name, or "Unknown". Recognising comes first
because a tiny model learns "which entity is this?" readily but not a separate "have I seen this one?"
(measured: with the choice as the first words, the choice did not depend on the image at all); with the name
first, a familiar image's name outscores "Unknown" and an unfamiliar one's does not, and the choice to search
then hangs on what was recognised and on the question.

Behaviours (the assistant turns; `{n1}` is the name in the first image-search result title):
- answer directly: "<reason> {name}: I know it.</reason><answer> {fact}</answer>";
- search: "<reason> Unknown: I will search with the image.</reason><search><img></search>" (a tail entity), or
  "<reason> {name}: I will search to be sure.</reason><search><img></search>" (a head entity, needlessly),
  then for a name question "<reason>The first result is {n1}.</reason><answer> {n1}</answer>", for an attribute
  "<reason>The first result is {n1}.</reason><text_search> {n1}</text_search>", then
  "<reason>The page about {n1} says it.</reason><answer> {fact of n1}</answer>";
- guess (a wrong direct answer): the direct form with another head entity of the same kind and its fact.

Names and facts are always written after a space, as they appear in the tools' results ("1. Dobel Tarn - statue",
"Dobel Tarn is in Wyvik."), so they are the same tokens there and in the answer (the answer is stripped).

The choice is imperfect on purpose, so that RL has something to learn: a head question is searched with a
probability that depends on what it asks (`head_search`: rarely for the name and the city, mostly for the year
and the maker, which the model nonetheless learns to answer, from the direct answers and from the searched
ones), and a tail question is guessed with probability `tail_guess`. A model trained on these conversations
answers head name and city questions directly and searches the head year and maker questions needlessly. The
answers after a search follow what the tools returned (a wrong first result gives a wrong answer), as a model
copying its results would.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mmsearch_r1.config import ProtocolConfig
from mmsearch_r1.types import Sample, ToolResult
from mmsearch_r1.world.entities import Entity


def _default_head_search() -> dict[str, float]:
    return {"name": 0.1, "place": 0.1, "year": 0.75, "maker": 0.75}


@dataclass
class SFTPlan:
    head_search: dict[str, float] = field(default_factory=_default_head_search)  # per attribute asked
    tail_guess: float = 0.05


UNKNOWN = "Unknown"


def direct_turn(kind: str, name: str, answer: str) -> str:
    return f"<reason> {name}: I know it.</reason><answer> {answer}</answer>"


def image_search_turn(kind: str, name: str | None = None) -> str:
    """The first search turn: of an unfamiliar entity (`name` None), or of a familiar one searched needlessly."""
    if name is None:
        return f"<reason> {UNKNOWN}: I will search with the image.</reason><search><img></search>"
    return f"<reason> {name}: I will search to be sure.</reason><search><img></search>"


def first_title_name(result: ToolResult) -> str | None:
    """The entity name of the first result title ("Dobel - statue" -> "Dobel"), or None without results."""
    for p in result.parts:
        if isinstance(p, str):
            for line in p.splitlines():
                head, sep, rest = line.partition(". ")
                if sep and head.strip().isdigit() and " - " in rest:
                    return rest.split(" - ")[0].strip()
    return None


def search_turns(
    sample: Sample,
    kind: str,
    attribute: str,
    tools: Mapping[str, Any],
    by_name: Mapping[str, Entity],
    known_name: str | None = None,
) -> list[tuple[str, ToolResult | None]]:
    img = tools["image_search"](None, sample)
    turns: list[tuple[str, ToolResult | None]] = [(image_search_turn(kind, known_name), img)]
    n1 = first_title_name(img) if img.ok else None
    if n1 is None or n1 not in by_name:
        turns.append(("<reason>The results do not name it.</reason><answer>unknown</answer>", None))
        return turns
    if attribute == "name":
        turns.append((f"<reason>The first result is {n1}.</reason><answer> {n1}</answer>", None))
        return turns
    txt = tools["text_search"](n1, sample)
    turns.append(
        (
            f"<reason>The first result is {n1}.</reason><text_search> {n1}</text_search>",
            txt,
        )
    )
    fact = by_name[n1].fact(attribute)
    turns.append((f"<reason>The page about {n1} says it.</reason><answer> {fact}</answer>", None))
    return turns


def plan_behaviour(entity: Entity, attribute: str, rng: random.Random, plan: SFTPlan) -> str:
    """ "direct", "search" or "guess" for one question (see the module docstring)."""
    if entity.group == "head":
        p = plan.head_search.get(attribute, 0.5)
        return "search" if rng.random() < p else "direct"
    return "guess" if rng.random() < plan.tail_guess else "search"


def build_world_conversations(
    samples: Sequence[Sample],
    entities: Sequence[Entity],
    tools: Mapping[str, Any],
    *,
    protocol: ProtocolConfig,
    prompt_set: str = "default",
    seed: int = 0,
    plan: SFTPlan | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[Any]:
    """One `Conversation` per sample; `meta` holds the behaviour, group and attribute."""
    from mmsearch_r1.rl.sft_data import build_conversation

    plan = plan or SFTPlan()
    rng = random.Random(f"world-sft-{seed}")
    by_id = {e.id: e for e in entities}
    by_name = {e.name: e for e in entities}
    heads = [e for e in entities if e.group == "head"]
    convs = []
    for n, s in enumerate(samples):
        e = by_id[s.extra_info["entity"]]
        attribute = s.extra_info["attribute"]
        behaviour = plan_behaviour(e, attribute, rng, plan)
        if behaviour == "direct":
            turns: list[tuple[str, ToolResult | None]] = [
                (direct_turn(e.kind, e.name, e.fact(attribute)), None)
            ]
        elif behaviour == "guess":
            same = [h for h in heads if h.kind == e.kind] or heads
            g = rng.choice(same)
            turns = [(direct_turn(e.kind, g.name, g.fact(attribute)), None)]
        else:
            known = e.name if e.group == "head" else None
            turns = search_turns(s, e.kind, attribute, tools, by_name, known_name=known)
        conv = build_conversation(
            s, turns, protocol=protocol, prompt_set=prompt_set, conversation_id=f"sft-{s.id}"
        )
        conv.meta.update(behaviour=behaviour, group=e.group, attribute=attribute)
        convs.append(conv)
        if progress is not None:
            progress(n + 1, len(samples))
    return convs
