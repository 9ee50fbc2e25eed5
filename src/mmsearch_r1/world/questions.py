"""Questions about the world's entities, as `Sample` records in the released schema.

Templates (one per asked fact; `{kind}` is the entity's kind):
- name: "What is the name of this {kind}?" (a tail entity needs image search only: the result titles name it)
- place: "In which city is this {kind}?"
- year: "In which year was this {kind} built?"
- maker: "Who made this {kind}?" (the three attributes need image search, then a text search for the name)

Each question shows a fresh rendering of the entity (`render(..., vary=1.0)`), never an indexed image. Head
entities give `category="search_free"` and `data_source="world_head"`; tail entities `"search_required"` and
`"world_tail"`. `extra_info` records the entity id, its name, the asked attribute and the group.
"""

from __future__ import annotations

import random

from mmsearch_r1.types import Answers, ImageData, Sample
from mmsearch_r1.world.entities import Entity
from mmsearch_r1.world.render import png_bytes, render

TEMPLATES: dict[str, str] = {
    "name": "What is the name of this {kind}?",
    "place": "In which city is this {kind}?",
    "year": "In which year was this {kind} built?",
    "maker": "Who made this {kind}?",
}
ASKED = tuple(TEMPLATES)
CATEGORY = {"head": "search_free", "tail": "search_required"}
SOURCE = {"head": "world_head", "tail": "world_tail"}


def make_sample(
    entity: Entity, attribute: str, rng: random.Random, sample_id: str, image_size: int
) -> Sample:
    """One question about `entity` asking `attribute`, with a new rendering drawn from `rng`."""
    if attribute not in TEMPLATES:
        raise ValueError(f"unknown question attribute {attribute!r}; expected one of {list(TEMPLATES)}")
    img = render(entity.identity, rng, image_size, vary=1.0)
    return Sample(
        id=sample_id,
        question=TEMPLATES[attribute].format(kind=entity.kind),
        images=[ImageData(bytes=png_bytes(img))],
        answers=Answers(entity.fact(attribute), []),
        data_source=SOURCE[entity.group],
        category=CATEGORY[entity.group],
        extra_info={"entity": entity.id, "name": entity.name, "attribute": attribute, "group": entity.group},
    )


def make_split(
    split: str,
    entities: list[Entity],
    head_renderings: int,
    tail_renderings: int,
    seed: int,
    image_size: int,
    max_head: int | None = None,
    max_tail: int | None = None,
    tail_attributes: int = len(ASKED),
) -> list[Sample]:
    """The questions of one split: every asked fact of every head entity (`head_renderings` times each) and of
    the split's own tail entities (`tail_renderings` times; only `tail_attributes` of the asked facts per tail
    entity, taken in turn), optionally capped per group (a seeded subset), then shuffled with the seed.

    Few questions per training tail entity keep a model from memorising their facts, so that it learns to read
    them from the search results instead."""
    rng = random.Random(f"world-questions-{seed}-{split}")
    plan: dict[str, list[tuple[Entity, str]]] = {"head": [], "tail": []}
    n_tail = 0
    for e in entities:
        if e.group == "head":
            plan["head"] += [(e, a) for _ in range(head_renderings) for a in ASKED]
        elif e.split == split:
            asked = [ASKED[(n_tail + k) % len(ASKED)] for k in range(tail_attributes)]
            plan["tail"] += [(e, a) for _ in range(tail_renderings) for a in asked]
            n_tail += 1
    for group, cap in (("head", max_head), ("tail", max_tail)):
        if cap is not None and len(plan[group]) > cap:
            plan[group] = rng.sample(plan[group], cap)
    items = plan["head"] + plan["tail"]
    rng.shuffle(items)
    return [make_sample(e, a, rng, f"world-{split}-{n:05d}", image_size) for n, (e, a) in enumerate(items)]
