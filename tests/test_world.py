"""The procedural search world: determinism, splits, search behaviour through the real tools, SFT conversations."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest

from mmsearch_r1.cli import main
from mmsearch_r1.data.reader import read_samples
from mmsearch_r1.protocol import extract_final_answer
from mmsearch_r1.reward import exact_match
from mmsearch_r1.rl.sft_data import read_conversations
from mmsearch_r1.tools import build_tools
from mmsearch_r1.world.build import SIZES, build_world, spec_for
from mmsearch_r1.world.corpus import fact_sentence
from mmsearch_r1.world.entities import draw_entities
from mmsearch_r1.world.questions import make_sample
from mmsearch_r1.world.render import render
from mmsearch_r1.world.sft import UNKNOWN, drill_turns, first_title_name

SEED = 3


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world") / "w"
    assert (
        main(["world", "build", "--out", str(out), "--seed", str(SEED), "--size", "small", "--no-progress"])
        == 0
    )
    return out


@pytest.fixture(scope="module")
def manifest(world_dir) -> dict:
    return json.loads((world_dir / "world.json").read_text())


def _digest(root: Path) -> dict[str, str]:
    skip = {"search.yaml"}  # holds the absolute index path
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in skip
    }


def test_same_seed_same_files_other_seed_differs(world_dir, tmp_path):
    again = build_world(tmp_path / "again", seed=SEED, size="small")
    assert _digest(again.root) == _digest(world_dir)
    a = draw_entities(SEED, 8, {"train": 4})
    b = draw_entities(SEED + 1, 8, {"train": 4})
    assert [e.name for e in a] != [e.name for e in b]
    assert [e.identity for e in a] != [e.identity for e in b]


def test_splits_schema_and_groups(world_dir, manifest):
    spec = spec_for("small")
    ents = {e["id"]: e for e in manifest["entities"]}
    tail_entities: dict[str, set[str]] = {}
    for split in ("train", "val", "test"):
        res = read_samples(world_dir / "data" / f"{split}.parquet")
        assert res.n_skipped == 0 and res.samples
        ids = [s.id for s in res.samples]
        assert len(set(ids)) == len(ids)
        for s in res.samples:
            e = ents[s.extra_info["entity"]]
            assert s.answers.ground_truth == (
                e["name"] if s.extra_info["attribute"] == "name" else str(e[s.extra_info["attribute"]])
            )
            assert len(s.images) == 1 and s.images[0].load().size == (spec.image_size, spec.image_size)
            if e["group"] == "head":
                assert (s.data_source, s.category) == ("world_head", "search_free")
            else:
                assert (s.data_source, s.category) == ("world_tail", "search_required")
                assert e["split"] == split
        tail_entities[split] = {s.extra_info["entity"] for s in res.samples if s.data_source == "world_tail"}
        heads = {s.extra_info["entity"] for s in res.samples if s.data_source == "world_head"}
        assert heads, split
        assert {s.extra_info["attribute"] for s in res.samples} == {"name", "place", "year", "maker"}
    assert not (tail_entities["train"] & tail_entities["test"])
    assert not (tail_entities["train"] & tail_entities["val"])
    test = read_samples(world_dir / "data" / "test.parquet").samples
    assert len(test) == 4 * (spec.n_head + spec.n_tail_test)


def test_entities_names_distinct_from_facts():
    ents = draw_entities(0, 16, {"train": 96, "val": 8, "test": 16})
    names = {e.name for e in ents}
    assert len(names) == len(ents)
    facts = {e.place for e in ents} | {e.maker for e in ents}
    assert not names & facts
    assert len({e.identity.key() for e in ents}) == len(ents)


def test_no_tail_entity_looks_like_a_head_entity():
    from mmsearch_r1.world.entities import looks_alike
    from mmsearch_r1.world.render import Identity

    a = Identity("emblem", "cross", fg=0, bg=7, accent=6, texture="dots", corner="ne")
    assert looks_alike(a, Identity("emblem", "hexagon", fg=3, bg=7, accent=1, texture="stripes", corner="sw"))
    assert looks_alike(a, Identity("vessel", "ring", fg=0, bg=7, accent=1, texture="plain", corner="sw"))
    assert not looks_alike(a, Identity("emblem", "cross", fg=0, bg=8, accent=6, texture="dots", corner="ne"))
    for seed in (0, 1, 2):
        ents = draw_entities(seed, 8, {"train": 500, "val": 8, "test": 16})
        head = [e.identity for e in ents if e.group == "head"]
        tail = [e.identity for e in ents if e.group == "tail"]
        assert len(tail) == 524 and not any(looks_alike(t, h) for t in tail for h in head)
        assert len({i.key() for i in head + tail}) == len(ents)
    with pytest.raises(ValueError, match="n_head=200"):  # every look taken by a head entity
        draw_entities(0, 200, {"train": 8}, n_name_words=40)


def test_question_images_are_not_indexed_copies(world_dir):
    indexed = {
        hashlib.sha256(p.read_bytes()).hexdigest() for p in (world_dir / "corpus" / "images").glob("*.png")
    }
    from PIL import Image

    indexed_pixels = {
        hashlib.sha256(Image.open(p).convert("RGB").tobytes()).hexdigest()
        for p in (world_dir / "corpus" / "images").glob("*.png")
    }
    for split in ("train", "test"):
        for s in read_samples(world_dir / "data" / f"{split}.parquet").samples:
            assert hashlib.sha256(s.images[0].bytes).hexdigest() not in indexed
            assert hashlib.sha256(s.images[0].load().tobytes()).hexdigest() not in indexed_pixels


def test_renderings_vary():
    ent = draw_entities(1, 1, {})[0]
    a = render(ent.identity, random.Random(0), 56, 1.0).tobytes()
    b = render(ent.identity, random.Random(1), 56, 1.0).tobytes()
    assert a != b


def test_search_tools_find_the_entity_and_its_facts(world_dir, manifest):
    from mmsearch_r1.config_io import load_config

    tools = build_tools(load_config(world_dir / "search.yaml").search)
    test = read_samples(world_dir / "data" / "test.parquet").samples
    tail = [s for s in test if s.data_source == "world_tail"]
    hits = 0
    for s in tail:
        res = tools["image_search"](None, s)
        assert res.ok and len(res.images) == spec_for("small").top_k
        hits += first_title_name(res) == s.extra_info["name"]
    assert hits / len(tail) >= 0.9, (hits, len(tail))
    ent = next(e for e in manifest["entities"] if e["group"] == "tail" and e["split"] == "test")
    for key in ("place", "maker", "year"):
        # the one-sentence summary of the entity's article answers the question asked, and only it
        sample = make_sample(draw_entities(SEED, 1, {})[0], key, random.Random(0), "q", 56)
        res = tools["text_search"](ent["name"], sample)
        assert res.ok
        first = res.text.split("\n\n")[0]
        assert f"/wiki/{ent['name'].replace(' ', '_')}" in first
        assert first.rstrip().endswith(f" {ent[key]}."), first
        assert all(str(ent[k]) not in first for k in ("place", "maker", "year") if k != key)


def test_sft_conversations_behaviours(world_dir, manifest):
    all_convs = read_conversations(world_dir / "sft" / "conversations.jsonl")
    convs = [c for c in all_convs if c.meta["behaviour"] != "drill"]
    train = read_samples(world_dir / "data" / "train.parquet").samples
    assert len(convs) == len(train)
    by_id = {f"sft-{s.id}": s for s in train}
    seen = set()
    entity_name = {e["id"]: e["name"] for e in manifest["entities"]}
    head_names = {e["name"] for e in manifest["entities"] if e["group"] == "head"}
    by_attr: dict[tuple[str, str], list[bool]] = {}
    right = {"direct": 0, "search": 0, "guess": 0}
    total = {"direct": 0, "search": 0, "guess": 0}
    for c in convs:
        s = by_id[c.id]
        b = c.meta["behaviour"]
        seen.add((c.meta["group"], b))
        texts = [m.text for m in c.messages if m.role == "assistant"]
        assert all(t.startswith("<reason>") for t in texts)
        n_img = sum("<search><img></search>" in t for t in texts)
        n_txt = sum("<text_search>" in t for t in texts)
        if b == "search":
            assert n_img == 1 and n_txt == (0 if s.extra_info["attribute"] == "name" else 1)
            # the tool turns carry the real observations
            assert "<information>" in c.messages[2].text
        else:
            assert n_img == n_txt == 0 and len(texts) == 1
        # the reasoning starts with what is recognised: a head entity's own name, "Unknown" for a searched tail
        # one, a (wrong) head name for a guess
        first = texts[0].removeprefix("<reason> ").split(":")[0]
        if c.meta["group"] == "head":
            assert first == entity_name[s.extra_info["entity"]]
        elif b == "search":
            assert first == UNKNOWN
        else:
            assert first in head_names and first != entity_name[s.extra_info["entity"]]
        by_attr.setdefault((c.meta["group"], s.extra_info["attribute"]), []).append(b == "search")
        total[b] += 1
        right[b] += exact_match(extract_final_answer(texts), s.answers.all())
    assert seen == {("head", "direct"), ("head", "search"), ("tail", "search"), ("tail", "guess")}
    assert right["direct"] == total["direct"]
    assert (
        right["guess"] <= 0.5 * total["guess"]
    )  # a guessed fact from the small pools (a few guesses) can be right
    assert right["search"] >= 0.9 * total["search"]
    # the imperfect choice: head name and city questions mostly answered, head year and maker mostly searched
    rate = {k: sum(v) / len(v) for k, v in by_attr.items()}
    assert rate[("head", "name")] < 0.3 and rate[("head", "place")] < 0.3
    assert rate[("head", "year")] > 0.6 and rate[("head", "maker")] > 0.6
    assert all(rate[("tail", a)] > 0.6 for a in ("name", "place", "year", "maker"))
    assert manifest["counts"]["sft"] == {
        f"{g}/{b}": n
        for (g, b), n in __import__("collections")
        .Counter((c.meta["group"], c.meta["behaviour"]) for c in all_convs)
        .items()
    }


def test_reading_drills_restate_the_page_with_another_fact(world_dir, manifest):
    convs = read_conversations(world_dir / "sft" / "conversations.jsonl")
    n_drills = spec_for("small").sft.fact_drills
    assert n_drills == 2
    by_id = {c.id: c for c in convs}
    values = {a: {e[a] for e in manifest["entities"]} for a in ("place", "year", "maker")}
    base = [
        c
        for c in convs
        if c.meta["behaviour"] == "search" and c.meta["group"] == "tail" and c.meta["attribute"] != "name"
    ]
    drills = [c for c in convs if c.meta["behaviour"] == "drill"]
    assert base and len(drills) == n_drills * len(base)
    for c in base:
        attribute = c.meta["attribute"]
        page, answer = c.messages[-2], c.messages[-1]
        old = extract_final_answer([answer.text])
        name = c.messages[-3].text.split("<text_search> ")[1].split("</text_search>")[0]
        sentence = fact_sentence(name, attribute, old)
        assert page.role == "user" and sentence in page.text
        new_values = set()
        for k in range(n_drills):
            d = by_id[f"{c.id}-drill{k}"]
            assert d.meta == {**c.meta, "behaviour": "drill"}
            # the answer step alone: the page stating another value of the fact, and that value as the answer
            assert [m.role for m in d.messages if m.role != "system"] == ["user", "assistant"]
            assert not any(m.images for m in d.messages)
            new = extract_final_answer([d.messages[-1].text])
            assert new != old and new in values[attribute]
            assert d.messages[-2].text == page.text.replace(sentence, fact_sentence(name, attribute, new))
            assert d.messages[-1].text == answer.text.replace(f" {old}</answer>", f" {new}</answer>")
            new_values.add(new)
        assert len(new_values) == n_drills


def test_drill_turns_change_one_sentence_or_refuse():
    from mmsearch_r1.types import ToolResult

    page = "1. Dul Ron\nSummary: Dul Ron was made by Coyard.\n\n2. Dul Rex\nSummary: Dul Rex was made by Coyard.\n"
    turns = [
        (
            "<reason> Unknown: I will search with the image.</reason><search><img></search>",
            ToolResult(parts=["x"]),
        ),
        (
            "<reason>The first result is Dul Ron.</reason><text_search> Dul Ron</text_search>",
            ToolResult(parts=[page]),
        ),
        ("<reason>The page about Dul Ron says it.</reason><answer> Coyard</answer>", None),
    ]
    out = drill_turns(turns, "maker", "Coyard", "Jeyett")
    assert out is not None and out[2][0].endswith("<answer> Jeyett</answer>")
    # only the named entity's sentence changes; another entity's same fact stays
    assert out[1][1].parts[0] == page.replace("Dul Ron was made by Coyard.", "Dul Ron was made by Jeyett.")
    assert turns[1][1].parts[0] == page  # the original result is not changed
    assert drill_turns(turns, "year", "Coyard", "1824") is None  # the page does not state it as a year
    twice = [turns[0], (turns[1][0], ToolResult(parts=[page, page])), turns[2]]
    assert drill_turns(twice, "maker", "Coyard", "Jeyett") is None
    assert drill_turns(turns[:2], "maker", "Coyard", "Jeyett") is None


def test_tokenizer_corpus_and_search_config(world_dir, manifest):
    text = (world_dir / "tokenizer_corpus.txt").read_text()
    for e in manifest["entities"][:5]:
        assert e["name"] in text and e["maker"] in text and e["place"] in text
    assert "<search><img></search>" in text and "Search only when you must" in text
    from mmsearch_r1.config_io import load_config
    from mmsearch_r1.world.build import COMPACT_PROMPT_SET

    cfg = load_config(world_dir / "search.yaml")
    assert Path(cfg.search.text_backend["index_dir"]) == (world_dir / "index").resolve()
    assert cfg.rollout.prompt_set == COMPACT_PROMPT_SET and cfg.search.top_k == spec_for("small").top_k


def test_bad_inputs(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown world size 'huge'"):
        build_world(tmp_path, size="huge")
    with pytest.raises(ValueError, match="unknown question attribute 'colour'"):
        make_sample(draw_entities(0, 1, {})[0], "colour", random.Random(0), "q", 56)
    assert set(SIZES) == {"small", "default"}
    with pytest.raises(SystemExit):
        main(["world", "build", "--out", str(tmp_path), "--size", "huge"])
    assert "invalid choice" in capsys.readouterr().err
