"""`build_world(out_dir, seed, size)`: write a complete procedural search world, deterministic by seed.

Layout of `out_dir`:
- `world.json`: the spec, the counts and every entity with its facts (for docs, tests and debugging);
- `data/{train,val,test}.parquet`: questions in the released schema (`data_id`, `category`, `data_source`);
- `corpus/pages.jsonl`, `corpus/images.jsonl` + `corpus/images/`: the web (see `world.corpus`);
- `index/text/`, `index/image/`: the BM25 text index and the image index (`mmsearch-r1 search index` layout);
- `search.yaml`: a config fragment: `search:` points both tools at those indexes (the extractive summarizer
  keeps the one sentence of a page that best matches the question), `rollout.prompt_set` names
  the prompt set the SFT conversations were written with (the demo's compact set, `world/prompts/`, unless
  another is given), so RL and eval show the model the same turns;
- `tokenizer_corpus.txt`: every text a model will read or write here (prompts, questions, pages, titles, SFT
  turns), for `build_tiny_model(corpus=...)`, so names and prompt words become few tokens;
- `sft/conversations.jsonl`: SFT conversations on the train split (`world.sft`), built with the real tools.

The compact prompt set (a deviation for the demo: the default instruction is about 210 tokens with the tiny
model's tokenizer, most of a conversation; the compact one says the same in about 50) keeps the protocol, the tags
and the `<information>` observation format, and is rendered by the rollout's own `PromptSet`.

Images are `image_size` pixels square (56 by default: 4 merged image tokens with the tiny model's processor).
Sizes: "small" (the demo's --quick) and "default"; see `SIZES`.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from mmsearch_r1.config import ProtocolConfig, SearchConfig
from mmsearch_r1.world.corpus import pages, write_pages, write_pictures
from mmsearch_r1.world.entities import draw_entities
from mmsearch_r1.world.questions import make_split
from mmsearch_r1.world.sft import SFTPlan, build_world_conversations

log = logging.getLogger(__name__)

# progress(stage, done, total)
Progress = Callable[[str, int, int], None]

COMPACT_PROMPT_SET = str(Path(__file__).resolve().with_name("prompts"))


@dataclass
class WorldSpec:
    n_head: int = 8
    n_tail_train: int = 1200
    n_tail_val: int = 8
    n_tail_test: int = 16
    head_renderings_train: int = 20  # questions per (head entity, attribute) in train
    head_renderings_test: int = 2  # and in test (val: 1)
    tail_renderings_train: int = 1
    tail_attributes_train: int = (
        1  # asked facts per train tail entity (fewer: less to memorise, more to read)
    )
    max_val_head: int = 16  # val questions per group (a seeded subset)
    max_val_tail: int = 16
    pictures_per_entity: int = 2
    n_name_words: int = 40  # two-word names from n_name_words**2 combinations
    image_size: int = 56
    top_k: int = 3  # search results shown per call (both tools)
    sft: SFTPlan = field(default_factory=SFTPlan)


SIZES: dict[str, WorldSpec] = {
    "default": WorldSpec(),
    "small": WorldSpec(
        n_head=4,
        n_tail_train=128,
        n_tail_val=4,
        n_tail_test=6,
        head_renderings_train=8,
        head_renderings_test=1,
        max_val_head=8,
        max_val_tail=8,
    ),
}


@dataclass
class World:
    """What `build_world` wrote (paths are inside `root`)."""

    root: Path
    seed: int
    size: str
    train: Path
    val: Path
    test: Path
    pages: Path
    images: Path
    index: Path
    search_config: Path
    tokenizer_corpus: Path
    sft_conversations: Path
    counts: dict[str, Any]

    def search(self) -> SearchConfig:
        """The `SearchConfig` of `search.yaml`."""
        from mmsearch_r1.config_io import load_config

        return load_config(self.search_config).search


def spec_for(size: str) -> WorldSpec:
    if size not in SIZES:
        raise ValueError(f"unknown world size {size!r}; expected one of {sorted(SIZES)}")
    return replace(SIZES[size])


def _search_yaml(index: Path, top_k: int, prompt_set: str) -> str:
    idx = json.dumps(str(index.resolve()))
    return (
        "# Search config for this world: both tools on the local indexes built here, and the prompt set\n"
        "# its SFT conversations were written with.\n"
        "search:\n"
        f"  top_k: {top_k}\n"
        f"  text_backend: {{type: local, index_dir: {idx}, summarizer: {{type: extractive, max_sentences: 1}}}}\n"
        f"  image_backend: {{type: local, index_dir: {idx}}}\n"
        "rollout:\n"
        f"  prompt_set: {json.dumps(prompt_set)}\n"
    )


def _conversation_texts(convs: list[Any]) -> list[str]:
    lines = []
    for c in convs:
        for m in c.messages:
            lines += [p for p in m.content if isinstance(p, str)]
    return lines


def build_world(
    out_dir: str | Path,
    seed: int = 0,
    size: str = "default",
    *,
    spec: WorldSpec | None = None,
    protocol: ProtocolConfig | None = None,
    prompt_set: str | None = None,
    progress: Progress | None = None,
) -> World:
    """Write the world to `out_dir` (created; existing files are overwritten) and return its `World`."""
    from mmsearch_r1.data.writer import write_samples
    from mmsearch_r1.rl.sft_data import write_conversations
    from mmsearch_r1.search.local_image import build_image_index
    from mmsearch_r1.search.local_text import build_text_index
    from mmsearch_r1.tools import build_tools

    sp = spec or spec_for(size)
    protocol = protocol or ProtocolConfig()
    prompt_set = prompt_set or COMPACT_PROMPT_SET
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)

    def tick(stage: str, done: int, total: int) -> None:
        if progress is not None:
            progress(stage, done, total)

    # -- entities and questions ------------------------------------------------------------------------------
    tick("entities", 0, 1)
    entities = draw_entities(
        seed,
        sp.n_head,
        {"train": sp.n_tail_train, "val": sp.n_tail_val, "test": sp.n_tail_test},
        n_name_words=sp.n_name_words,
    )
    splits = {
        "train": make_split(
            "train",
            entities,
            sp.head_renderings_train,
            sp.tail_renderings_train,
            seed,
            sp.image_size,
            tail_attributes=sp.tail_attributes_train,
        ),
        "val": make_split(
            "val", entities, 1, 1, seed, sp.image_size, max_head=sp.max_val_head, max_tail=sp.max_val_tail
        ),
        "test": make_split("test", entities, sp.head_renderings_test, 1, seed, sp.image_size),
    }
    paths = {
        name: write_samples(samples, root / "data" / f"{name}.parquet") for name, samples in splits.items()
    }
    tick("entities", 1, 1)

    # -- the web and its indexes ------------------------------------------------------------------------------
    tick("indexes", 0, 2)
    page_rows = pages(entities, seed)
    pages_path = write_pages(root / "corpus" / "pages.jsonl", page_rows)
    images_path = write_pictures(entities, root / "corpus", seed, sp.pictures_per_entity, sp.image_size)
    index = root / "index"
    build_text_index(pages_path, index / "text")
    tick("indexes", 1, 2)
    build_image_index(images_path, index / "image", thumb_max_side=sp.image_size)
    search_path = root / "search.yaml"
    search_path.write_text(_search_yaml(index, sp.top_k, prompt_set), encoding="utf-8")
    tick("indexes", 2, 2)

    # -- SFT conversations with the real tools ----------------------------------------------------------------
    from mmsearch_r1.config_io import load_config

    tools = build_tools(load_config(search_path).search)
    convs = build_world_conversations(
        splits["train"],
        entities,
        tools,
        protocol=protocol,
        prompt_set=prompt_set,
        seed=seed,
        plan=sp.sft,
        progress=lambda d, t: tick("sft conversations", d, t),
    )
    sft_path = write_conversations(root / "sft" / "conversations.jsonl", convs)

    # -- tokenizer corpus ----------------------------------------------------------------------------------------
    lines = _conversation_texts(convs)
    lines += [r["title"] + "\n" + r["text"] for r in page_rows]
    lines += [s.question for split in splits.values() for s in split]
    lines += [f"{e.name} - {e.kind}" for e in entities]
    corpus_path = root / "tokenizer_corpus.txt"
    corpus_path.write_text("\n".join(line.replace("\r", " ") for line in lines) + "\n", encoding="utf-8")

    # -- manifest --------------------------------------------------------------------------------------------
    behaviours = Counter((c.meta["group"], c.meta["behaviour"]) for c in convs)
    counts: dict[str, Any] = {
        "entities": {
            "head": sp.n_head,
            "tail": {"train": sp.n_tail_train, "val": sp.n_tail_val, "test": sp.n_tail_test},
        },
        "questions": {
            name: dict(Counter(s.data_source for s in samples)) for name, samples in splits.items()
        },
        "pages": len(page_rows),
        "pictures": len(entities) * sp.pictures_per_entity,
        "sft": {f"{g}/{b}": n for (g, b), n in sorted(behaviours.items())},
    }
    manifest = {
        "seed": seed,
        "size": size,
        "spec": asdict(sp),
        "counts": counts,
        "entities": [
            {**{k: v for k, v in asdict(e).items() if k != "identity"}, "identity": asdict(e.identity)}
            for e in entities
        ],
    }
    (root / "world.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    log.info("world (seed %d, %s) written to %s: %s", seed, size, root, counts)
    return World(
        root=root,
        seed=seed,
        size=size,
        train=paths["train"],
        val=paths["val"],
        test=paths["test"],
        pages=pages_path,
        images=images_path,
        index=index,
        search_config=search_path,
        tokenizer_corpus=corpus_path,
        sft_conversations=sft_path,
        counts=counts,
    )
