"""SFT conversations for the world: the protocol on both kinds of question, with a deliberately imperfect choice
of when to search, written by running the real search tools and the rollout's own prompts.

Behaviours (the assistant turns; `{n1}` is the name in the first image-search result title):
- answer directly: "<reason>I know it: {name}.</reason><answer> {fact}</answer>";
- image search: "<reason>I do not know it. I will search with the image.</reason><search><img></search>",
  then for a name question "<reason>The first result is {n1}.</reason><answer> {n1}</answer>", for an attribute
  "<reason>The first result is {n1}.</reason><text_search> {n1}</text_search>", then
  "<reason>The page about {n1} says it.</reason><answer> {fact of n1}</answer>";

Names and facts are always written after a space, as they appear in the tools' results ("1. Dobel Tarn - statue",
"Dobel Tarn is in Wyvik."), so they are the same tokens there and in the answer (the answer is stripped);
- guess (a wrong direct answer): the direct form with another head entity of the same kind and its fact.

The choice is imperfect on purpose, so that RL has something to learn: each head entity is searched with
probability `head_search_high` (every other head entity) or `head_search_low` (the rest), and a tail question
is guessed with probability `tail_guess`. The answers after a search follow what the tools returned (a wrong
first result gives a wrong answer), as a model copying its results would.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mmsearch_r1.config import ProtocolConfig
from mmsearch_r1.types import Sample, ToolResult
from mmsearch_r1.world.entities import Entity


@dataclass
class SFTPlan:
    head_search_high: float = 0.75
    head_search_low: float = 0.25
    tail_guess: float = 0.15


def direct_turn(kind: str, name: str, answer: str) -> str:
    return f"<reason>I know it: {name}.</reason><answer> {answer}</answer>"


def image_search_turn(kind: str) -> str:
    return "<reason>I do not know it. I will search with the image.</reason><search><img></search>"


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
    sample: Sample, kind: str, attribute: str, tools: Mapping[str, Any], by_name: Mapping[str, Entity]
) -> list[tuple[str, ToolResult | None]]:
    img = tools["image_search"](None, sample)
    turns: list[tuple[str, ToolResult | None]] = [(image_search_turn(kind), img)]
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


def plan_behaviour(entity: Entity, head_rank: int, rng: random.Random, plan: SFTPlan) -> str:
    """ "direct", "search" or "guess" for one question (see the module docstring)."""
    if entity.group == "head":
        p = plan.head_search_high if head_rank % 2 == 0 else plan.head_search_low
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
    head_rank = {e.id: i for i, e in enumerate(heads)}
    convs = []
    for n, s in enumerate(samples):
        e = by_id[s.extra_info["entity"]]
        attribute = s.extra_info["attribute"]
        behaviour = plan_behaviour(e, head_rank.get(e.id, 0), rng, plan)
        if behaviour == "direct":
            turns: list[tuple[str, ToolResult | None]] = [
                (direct_turn(e.kind, e.name, e.fact(attribute)), None)
            ]
        elif behaviour == "guess":
            same = [h for h in heads if h.kind == e.kind] or heads
            g = rng.choice(same)
            turns = [(direct_turn(e.kind, g.name, g.fact(attribute)), None)]
        else:
            turns = search_turns(s, e.kind, attribute, tools, by_name)
        conv = build_conversation(
            s, turns, protocol=protocol, prompt_set=prompt_set, conversation_id=f"sft-{s.id}"
        )
        conv.meta.update(behaviour=behaviour, group=e.group, attribute=attribute)
        convs.append(conv)
        if progress is not None:
            progress(n + 1, len(samples))
    return convs
