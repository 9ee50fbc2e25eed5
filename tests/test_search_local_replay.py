"""Replay image backend: cached results by sample key from the converter's manifest layout."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from mmsearch_r1.config import SearchConfig
from mmsearch_r1.search.base import ImageQuery, SearchError
from mmsearch_r1.search.replay import ReplayImageBackend, read_manifest
from mmsearch_r1.types import ImageData


def png(color: tuple[int, int, int], size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture()
def root(tmp_path) -> Path:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a0.png").write_bytes(png((255, 0, 0)))
    (tmp_path / "images" / "a2.png").write_bytes(png((0, 0, 255)))
    lines = [
        {
            "key": "fvqa_1",
            "results": [
                {
                    "title": "Red thing",
                    "thumbnail": "images/a0.png",
                    "thumbnail_url": None,
                    "url": "http://r/0",
                },
                {
                    "title": "Remote thing",
                    "thumbnail": None,
                    "thumbnail_url": "http://cdn/t.jpg",
                    "url": None,
                },
                {
                    "title": "Blue thing",
                    "thumbnail": "images/a2.png",
                    "thumbnail_url": None,
                    "url": "http://r/2",
                },
                {
                    "title": "Lost file",
                    "thumbnail": "images/gone.png",
                    "thumbnail_url": None,
                    "url": "http://r/3",
                },
            ],
        },
        {"key": "fvqa_2", "results": []},
    ]
    (tmp_path / "manifest.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return tmp_path


def test_replay_hits_in_order(root):
    b = ReplayImageBackend(str(root))
    hits = b.search(ImageQuery(image=ImageData(bytes=png((1, 2, 3))), key="fvqa_1"), 10)
    assert [h.title for h in hits] == ["Red thing", "Remote thing", "Blue thing", "Lost file"]
    assert hits[0].thumbnail.load().getpixel((0, 0)) == (255, 0, 0)
    assert hits[0].url == "http://r/0" and hits[0].source == "replay"
    assert hits[1].thumbnail is None and hits[1].thumbnail_url == "http://cdn/t.jpg" and hits[1].url == ""
    assert hits[2].thumbnail.load().size == (40, 30)
    assert hits[3].thumbnail is None  # listed but missing on disk: title kept
    assert [h.title for h in b.search(ImageQuery(key="fvqa_1"), 2)] == ["Red thing", "Remote thing"]
    assert b.search(ImageQuery(key="fvqa_2"), 5) == []


def test_replay_misses(root):
    b = ReplayImageBackend(str(root))
    with pytest.raises(SearchError) as ei:
        b.search(ImageQuery(key="fvqa_999"), 5)
    assert not ei.value.retryable and "fvqa_999" in str(ei.value)
    with pytest.raises(SearchError, match="key"):
        b.search(ImageQuery(image=ImageData(bytes=png((0, 0, 0)))), 5)


def test_manifest_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest"):
        ReplayImageBackend(str(tmp_path))
    m = tmp_path / "manifest.jsonl"
    m.write_text('{"key": "a", "results": []}\n{"results": []}\n')
    with pytest.raises(ValueError, match=r"manifest.jsonl:2: field 'key'"):
        read_manifest(tmp_path)
    m.write_text('{"key": "a", "results": [{"title": 3}]}\n')
    with pytest.raises(ValueError, match=r":1: results\[0\]: field 'title'"):
        read_manifest(tmp_path)
    m.write_text('{"key": "a", "results": [{"title": "t", "thumbnail": "../../etc/passwd"}]}\n')
    with pytest.raises(ValueError, match="outside"):
        read_manifest(tmp_path)


def test_factory_builds_replay(root):
    from mmsearch_r1.search.factory import build_image_backend

    b = build_image_backend(SearchConfig(image_backend={"type": "replay", "root": str(root)}))
    assert b.search(ImageQuery(key="fvqa_1"), 1)[0].title == "Red thing"
