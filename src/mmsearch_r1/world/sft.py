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

Reading drills (`fact_drills` per searched train tail fact question, 2 by default): the answer step alone (the
text-search result, then "<reason>The page about {n1} says it.</reason><answer> {v}</answer>") with the fact's
sentence on the page of {n1} restating another value {v} of that fact, drawn from the world's values. Memory
cannot answer them (the same entity comes with three values), only the page can; they are short (no image, one
turn), so the answer attends over about 120 tokens instead of 400. Measured (docs/demo.md): with them the tiny
model reads the fact from the page several hundred steps sooner.

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
from mmsearch_r1.world.corpus import fact_sentence
from mmsearch_r1.world.entities import ATTRIBUTES, Entity


def _default_head_search() -> dict[str, float]:
    return {"name": 0.1, "place": 0.1, "year": 0.75, "maker": 0.75}


@dataclass
class SFTPlan:
    head_search: dict[str, float] = field(default_factory=_default_head_search)  # per attribute asked
    tail_guess: float = 0.05
    # reading drills per searched train tail fact question (module docstring)
    fact_drills: int = 2


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


def drill_turns(
    turns: list[tuple[str, ToolResult | None]], attribute: str, old: str, new: str
) -> list[tuple[str, ToolResult | None]] | None:
    """`turns` of a searched fact question (image search, text search, answer) with the fact `old` of the
    entity its text search named replaced by `new`: in the page sentence that states it and in the answer.
    None when the text-search result does not state `old` in that entity's sentence exactly once."""
    if len(turns) != 3 or turns[1][1] is None:
        return None
    query_turn, result = turns[1]
    name = query_turn.split("<text_search> ", 1)[1].split("</text_search>", 1)[0]
    before, after = fact_sentence(name, attribute, old), fact_sentence(name, attribute, new)
    if sum(p.count(before) for p in result.parts if isinstance(p, str)) != 1:
        return None
    parts = [p.replace(before, after) if isinstance(p, str) else p for p in result.parts]
    answer = turns[2][0]
    if not answer.endswith(f"<answer> {old}</answer>"):
        return None
    answer = answer[: -len(f" {old}</answer>")] + f" {new}</answer>"
    changed = ToolResult(parts=parts, ok=result.ok, error=result.error, stats=dict(result.stats))
    return [turns[0], (query_turn, changed), (answer, None)]


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
    """One `Conversation` per sample, then its reading drills; `meta` holds the behaviour ("direct", "search",
    "guess" or "drill"), group and attribute."""
    from mmsearch_r1.rl.sft_data import Conversation, build_conversation

    plan = plan or SFTPlan()
    rng = random.Random(f"world-sft-{seed}")
    by_id = {e.id: e for e in entities}
    by_name = {e.name: e for e in entities}
    heads = [e for e in entities if e.group == "head"]
    values = {a: sorted({e.fact(a) for e in entities}) for a in ATTRIBUTES}
    drill_rng = random.Random(f"world-sft-drills-{seed}")
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
        if behaviour == "search" and e.group == "tail" and attribute != "name" and len(turns) == 3:
            old = turns[2][0].split("<answer> ", 1)[1].split("</answer>", 1)[0]
            others = [v for v in values[attribute] if v != old]
            for k, new in enumerate(drill_rng.sample(others, min(plan.fact_drills, len(others)))):
                drilled = drill_turns(turns, attribute, old, new)
                if drilled is None:
                    break
                d = build_conversation(
                    s,
                    drilled,
                    protocol=protocol,
                    prompt_set=prompt_set,
                    conversation_id=f"sft-{s.id}-drill{k}",
                )
                # the drill is the answer step only: the text-search result and the answer turn
                d = Conversation(d.id, [m for m in d.messages[:1] if m.role == "system"] + d.messages[-2:])
                d.meta.update(behaviour="drill", group=e.group, attribute=attribute)
                convs.append(d)
        if progress is not None:
            progress(n + 1, len(samples))
    return convs
