"""The world's web: text pages (for the BM25 text index) and titled pictures (for the image index).

Pages, one JSON a line (`url`, `title`, `text`):
- an article per entity, the only page that states its facts, one fact a sentence, each sentence sharing a word
  with its question's template and no other ("city", "made", "year"/"built"), so the extractive summarizer
  (kept to one sentence by the world's search config) returns the sentence that answers:
  "Dobel Tarn is in the city of Wyvik. Dobel Tarn was made by Jiaard. Dobel Tarn was built in the year 1926.";
- a distractor per entity that names it (and another entity) but states none of its facts;
- a page per city and per maker that names no entity.
Pictures: `renderings_per_entity` renderings of every entity (vary 0.35, not the question images), each titled
"Dobel - statue" with its own url, so the image search results name the entity.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from mmsearch_r1.world.entities import Entity
from mmsearch_r1.world.render import png_bytes, render

BASE_URL = "https://world.example"


def _slug(name: str) -> str:
    return name.replace(" ", "_")


_FACT_SENTENCES = {
    "place": "{name} is in the city of {value}.",
    "maker": "{name} was made by {value}.",
    "year": "{name} was built in the year {value}.",
}


def fact_sentence(name: str, attribute: str, value: str) -> str:
    """The article's sentence stating one fact ("Dobel Tarn is in the city of Wyvik.")."""
    return _FACT_SENTENCES[attribute].format(name=name, value=value)


def article(e: Entity) -> dict[str, str]:
    text = " ".join(fact_sentence(e.name, a, e.fact(a)) for a in ("place", "maker", "year"))
    return {"url": f"{BASE_URL}/wiki/{_slug(e.name)}", "title": e.name, "text": text}


def distractor(e: Entity, other: Entity) -> dict[str, str]:
    text = (
        f"Many visitors take photos of {e.name}. Some say {e.name} looks like {other.name}. "
        f"This forum has no facts about {e.name}."
    )
    return {"url": f"{BASE_URL}/forum/{_slug(e.name)}", "title": f"Photos of {e.name}", "text": text}


def pages(entities: list[Entity], seed: int) -> list[dict[str, str]]:
    """All pages of the world, in a fixed order."""
    rng = random.Random(f"world-pages-{seed}")
    out = [article(e) for e in entities]
    for e in entities:
        other = rng.choice([o for o in entities if o.id != e.id])
        out.append(distractor(e, other))
    for place in sorted({e.place for e in entities}):
        out.append(
            {
                "url": f"{BASE_URL}/city/{place}",
                "title": place,
                "text": f"{place} is a city. {place} has a market and a harbour.",
            }
        )
    for maker in sorted({e.maker for e in entities}):
        out.append(
            {
                "url": f"{BASE_URL}/maker/{maker}",
                "title": maker,
                "text": f"{maker} is a workshop. {maker} works with stone, glass and metal.",
            }
        )
    return out


def write_pages(path: Path, rows: list[dict[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


def write_pictures(
    entities: list[Entity], out_dir: Path, seed: int, renderings_per_entity: int, image_size: int
) -> Path:
    """Write `out_dir/images/*.png` and `out_dir/images.jsonl` (image, title, url); returns the JSONL path."""
    rng = random.Random(f"world-pictures-{seed}")
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for e in entities:
        for k in range(renderings_per_entity):
            rel = f"images/{e.id}_{k}.png"
            (out_dir / rel).write_bytes(png_bytes(render(e.identity, rng, image_size, vary=0.35)))
            rows.append(
                {"image": rel, "title": f"{e.name} - {e.kind}", "url": f"{BASE_URL}/photo/{e.id}/{k}"}
            )
    return write_pages(out_dir / "images.jsonl", rows)
