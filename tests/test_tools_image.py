"""Image search tool: query built from the sample, thumbnails interleaved with titles, downscaling, bad
thumbnails, cumulative counters, and the real local index end to end."""

from __future__ import annotations

import json

from PIL import Image

from mmsearch_r1.search.base import ImageHit
from mmsearch_r1.search.local_image import LocalImageBackend, build_image_index
from mmsearch_r1.tools import ImageSearchTool
from mmsearch_r1.types import ImageData
from test_tools_contract import FakeImageBackend, make_sample, png


def test_query_from_sample_and_interleaving():
    backend = FakeImageBackend(["Tower A", "Tower B", "Tower C"])
    sample = make_sample("fvqa_7")
    res = ImageSearchTool(backend, top_k=3, thumbnail_max_side=100)(None, sample)
    ((query, k),) = backend.queries
    assert k == 3 and query.key == "fvqa_7" and query.url == "http://img.example/q.jpg"
    assert query.image is sample.images[0]
    kinds = ["img" if isinstance(p, Image.Image) else p for p in res.parts]
    assert kinds == ["img", "1. Tower A\n", "img", "2. Tower B\n", "img", "3. Tower C\n"]
    assert all(p.size == (100, 67) for p in res.images)  # 300x200 downscaled, aspect kept
    assert res.stats["thumbnails"] == 3


def test_bad_or_missing_thumbnails_keep_titles():
    class Backend:
        name = "b"

        def search(self, query, k):
            return [
                ImageHit(title="broken", thumbnail=ImageData(bytes=b"garbage")),
                ImageHit(title="", thumbnail=None, thumbnail_url="http://cdn/x.jpg"),
                ImageHit(title="small", thumbnail=ImageData(bytes=png(size=(20, 10)))),
            ]

    res = ImageSearchTool(Backend(), top_k=5, thumbnail_max_side=64)(None, make_sample())
    kinds = ["img" if isinstance(p, Image.Image) else p for p in res.parts]
    assert kinds == ["1. broken\n", "2. (untitled)\n", "img", "3. small\n"]
    assert res.images[0].size == (20, 10)  # never upscaled
    assert res.stats["thumbnail_errors"] == 1 and res.ok


def test_counters_accumulate():
    tool = ImageSearchTool(FakeImageBackend(["a", "b"]), top_k=5)
    for _ in range(3):
        tool(None, make_sample())
    tool.backend.outcome = RuntimeError("down")
    tool(None, make_sample())
    snap = tool.counters.snapshot()
    assert snap["calls"] == 4 and snap["errors"] == 1 and snap["hits"] == 6 and snap["latency_s"] > 0


def test_local_index_end_to_end(tmp_path):
    colours = [(220, 30, 30), (30, 160, 40), (40, 70, 220), (240, 200, 20)]
    rows = []
    for i, c in enumerate(colours):
        img = Image.new("RGB", (120, 90), c)
        img.paste((255, 255, 255), (30, 20, 60, 50))
        img.save(tmp_path / f"{i}.png")
        rows.append({"image": f"{i}.png", "title": f"Item {i}", "url": f"http://i/{i}"})
    (tmp_path / "images.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    build_image_index(tmp_path / "images.jsonl", tmp_path / "idx" / "image")
    sample = make_sample()
    sample.images = [ImageData(path=str(tmp_path / "2.png"))]
    res = ImageSearchTool(LocalImageBackend(str(tmp_path / "idx")), top_k=2, thumbnail_max_side=48)(
        None, sample
    )
    assert res.ok and res.parts[1] == "1. Item 2\n" and len(res.images) == 2
    assert max(res.images[0].size) == 48
