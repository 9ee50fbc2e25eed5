"""Entities of the procedural world: names, facts and image identities, drawn deterministically from a seed.

Every entity has a kind (statue, emblem, vessel, machine), a distinct image identity (`render.Identity`), a made-up
two-word name ("Dobel Tarn") and three facts: the city it is in (`place`), the year it was made (`year`) and its
maker (`maker`). Name words, cities and makers are invented words from disjoint syllable pools, so no answer is
guessable from English and a name word is never also a city or a maker. Years come from a pool of `n_years`
values in 1800-2019.

Why two-word names from small word pools: a test tail entity's name is a new combination of words every model
has seen in training, so a small model can copy it from search results word by word (a made-up one-word name
per entity would be a token no model ever trained on, and uncopyable for a tiny one). Facts come from small
pools for the same reason.

Looks: no two entities share shape, colours and texture (`Identity.key`), and no tail entity looks like a head
entity (`looks_alike`: the same background and the same foreground or kind), so that a tail picture is not
taken for a head entity the model knows (it would then answer from memory, wrongly, without searching).

Groups: "head" entities appear in every split (the model can learn to recognise them in warm-up); "tail" entities
belong to exactly one split (train, val or test), so a test tail entity is never seen in training and can only be
answered by searching.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from mmsearch_r1.world.render import KIND_SHAPES, Identity, draw_identity

KINDS = tuple(KIND_SHAPES)
ATTRIBUTES = ("place", "year", "maker")

_NAME_ON = ("b", "d", "k", "m", "n", "r", "t", "v", "z", "l")
_NAME_VOW = ("a", "e", "i", "o", "u")
_NAME_END = ("n", "r", "s", "x", "l")
_PLACE_ON = ("p", "g", "h", "s", "f", "w")
_PLACE_VOW = ("ai", "ou", "ee", "oa", "y")
_PLACE_END = ("burg", "mouth", "ford", "holm", "vik")
_MAKER_ON = ("Q", "J", "C", "Y")
_MAKER_MID = ("ua", "ia", "ey", "oy")
_MAKER_END = ("sson", "wick", "ett", "ard")


@dataclass(frozen=True)
class Entity:
    """One thing in the world (see the module docstring)."""

    id: str
    name: str
    kind: str
    identity: Identity
    place: str
    year: str
    maker: str
    group: str  # "head" | "tail"
    split: str  # "all" for head entities, else "train" | "val" | "test"

    def fact(self, attribute: str) -> str:
        if attribute == "name":
            return self.name
        if attribute not in ATTRIBUTES:
            raise ValueError(f"unknown attribute {attribute!r}")
        return str(getattr(self, attribute))


def _name_word(rng: random.Random) -> str:
    n = rng.choice((1, 2))
    word = "".join(rng.choice(_NAME_ON) + rng.choice(_NAME_VOW) for _ in range(n)) + rng.choice(_NAME_END)
    return word.capitalize()


def _place_name(rng: random.Random) -> str:
    return (rng.choice(_PLACE_ON) + rng.choice(_PLACE_VOW) + rng.choice(_PLACE_END)).capitalize()


def _maker_name(rng: random.Random) -> str:
    return rng.choice(_MAKER_ON) + rng.choice(_MAKER_MID) + rng.choice(_MAKER_END)


def _unique(rng: random.Random, make, n: int, taken: set[str]) -> list[str]:
    out: list[str] = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 10_000 * max(1, n):
            raise ValueError(f"cannot draw {n} distinct names from the syllable pool")
        v = make(rng)
        if v not in taken:
            taken.add(v)
            out.append(v)
    return out


def looks_alike(a: Identity, b: Identity) -> bool:
    """Same background colour and either the same foreground colour or the same kind (shape family).

    The background fills most of a picture, so at the tiny model's 56-112 pixels these pairs are the ones it
    confuses: in the demo's runs every tail test question answered wrongly from memory after GRPO was about a
    tail entity the model had named as a head entity of this kind of likeness (docs/demo.md).
    """
    return a.bg == b.bg and (a.fg == b.fg or a.kind == b.kind)


def draw_entities(
    seed: int,
    n_head: int,
    n_tail: dict[str, int],
    n_places: int = 12,
    n_makers: int = 12,
    n_years: int = 16,
    n_name_words: int = 24,
) -> list[Entity]:
    """Head entities (split "all") then tail entities per split, in a fixed order. Deterministic by `seed`."""
    rng = random.Random(f"world-entities-{seed}")
    total = n_head + sum(n_tail.values())
    taken: set[str] = set()
    places = _unique(rng, _place_name, n_places, taken)
    makers = _unique(rng, _maker_name, n_makers, taken)
    firsts = _unique(rng, _name_word, n_name_words, taken)
    seconds = _unique(rng, _name_word, n_name_words, taken)
    if total > len(firsts) * len(seconds):
        raise ValueError(f"{total} entities need more than {n_name_words}**2 two-word names")
    names = [f"{a} {b}" for a, b in rng.sample([(a, b) for a in firsts for b in seconds], total)]
    years = sorted(rng.sample(range(1800, 2020), n_years))
    idents: list[Identity] = []
    keys: set[tuple] = set()
    while len(idents) < total:
        ident = draw_identity(rng, KINDS[len(idents) % len(KINDS)])
        if ident.key() in keys:
            continue
        keys.add(ident.key())
        idents.append(ident)
    rng.shuffle(idents)
    for i in range(n_head, total):  # a tail entity may not look like a head entity (`looks_alike`)
        tries = 0
        while any(looks_alike(idents[i], h) for h in idents[:n_head]):
            tries += 1
            if tries > 10_000:
                raise ValueError(f"n_head={n_head}: no {idents[i].kind} look is left that no head entity has")
            ident = draw_identity(rng, idents[i].kind)
            if ident.key() not in keys:
                keys.discard(idents[i].key())
                keys.add(ident.key())
                idents[i] = ident
    plan = [("head", "all")] * n_head
    for split in ("train", "val", "test"):
        plan += [("tail", split)] * n_tail.get(split, 0)
    out = []
    for i, ((group, split), name, ident) in enumerate(zip(plan, names, idents, strict=True)):
        out.append(
            Entity(
                id=f"e{i:04d}",
                name=name,
                kind=ident.kind,
                identity=ident,
                place=rng.choice(places),
                year=str(rng.choice(years)),
                maker=rng.choice(makers),
                group=group,
                split=split,
            )
        )
    return out
