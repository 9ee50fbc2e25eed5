"""The search service over the real local backends (BM25 text index, image index, SQLite cache) built from a
config, used by the real tools through `"service"` client backends; and `mmsearch-r1 search serve` as a process."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image

import mmsearch_r1.search.client  # noqa: F401  (registers the "service" backends)
from mmsearch_r1.cli.search_serve import is_loopback
from mmsearch_r1.config import SearchConfig
from mmsearch_r1.search.base import Page
from mmsearch_r1.search.local_image import build_image_index
from mmsearch_r1.search.local_text import build_text_index
from mmsearch_r1.search.service import create_app_from_config
from mmsearch_r1.tools import build_tools
from mmsearch_r1.types import Answers, ImageData, Sample
from test_search_service import serve  # noqa: E402

TOKEN = "local-test-token"
ENV = "MMSEARCH_TEST_LOCAL_SERVICE_TOKEN"
TOPICS = ["volcano", "glacier", "desert", "rainforest", "coral reef", "tundra"]
COLORS = [(220, 40, 40), (40, 200, 60), (40, 60, 220), (230, 200, 30)]


def picture(i: int) -> Image.Image:
    img = Image.new("RGB", (96, 96), COLORS[i])
    for x in range(96):
        for y in range(0, 96, 8 + 4 * i):
            img.putpixel((x, y), (255 - COLORS[i][0], 255 - COLORS[i][1], 255 - COLORS[i][2]))
    return img


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("svcidx")
    pages = [
        Page(f"http://wiki.test/{t.replace(' ', '_')}", t.title(), f"A {t} is a landform. The {t} number {i} "
             f"is famous for its {t} wildlife. Visitors come every year.")
        for i, t in enumerate(TOPICS)
    ]  # fmt: skip
    build_text_index(pages, root / "idx" / "text")
    rows = []
    for i in range(len(COLORS)):
        picture(i).save(root / f"img{i}.png")
        rows.append(f'{{"image": "img{i}.png", "title": "Picture {i}", "url": "http://img.test/{i}"}}')
    (root / "images.jsonl").write_text("\n".join(rows) + "\n")
    build_image_index(root / "images.jsonl", root / "idx" / "image")
    return root


@pytest.fixture(scope="module")
def server(index_dir):
    idx = str(index_dir / "idx")
    cfg = SearchConfig(
        top_k=2,
        text_backend={"type": "local", "index_dir": idx, "cache": True},
        image_backend={"type": "local", "index_dir": idx},
        cache_path=str(index_dir / "cache.sqlite"),
    )
    with serve(create_app_from_config(cfg, token=TOKEN, workers=8)) as url:
        yield url, cfg


def client_cfg(url: str) -> SearchConfig:
    comp = {"type": "service", "url": url, "token_env": ENV, "cache": False, "timeout_s": 20}
    return SearchConfig(
        top_k=2,
        text_backend={**comp, "reader": dict(comp), "summarizer": dict(comp)},
        image_backend=dict(comp),
    )


def test_tools_through_service_equal_local_tools(server, monkeypatch):
    url, local_cfg = server
    monkeypatch.setenv(ENV, TOKEN)
    remote, local = build_tools(client_cfg(url)), build_tools(local_cfg)
    sample = Sample(id="s1", question="Which animals live near a glacier?", images=[], answers=Answers("x"))
    got = remote["text_search"]("glacier wildlife", sample)
    want = local["text_search"]("glacier wildlife", sample)
    assert (
        got.ok and got.text == want.text and got.text.startswith("1. Glacier\nURL: http://wiki.test/glacier")
    )

    for i in range(len(COLORS)):
        buf = io.BytesIO()
        picture(i).resize((80, 80)).save(buf, "JPEG", quality=90)
        q = Sample(id=f"q{i}", question="?", images=[ImageData(bytes=buf.getvalue())], answers=Answers("x"))
        res = remote["image_search"](None, q)
        assert res.ok, res.text
        texts = [p for p in res.parts if isinstance(p, str)]
        assert texts[0] == f"1. Picture {i}\n", texts  # the right item is top-1
        want_local = local["image_search"](None, q)
        assert texts == [p for p in want_local.parts if isinstance(p, str)]
        thumbs = [p for p in res.parts if not isinstance(p, str)]
        assert len(thumbs) == 2 and thumbs[0].size == (96, 96)


def test_cache_and_collapse_are_shared_by_workers(server):
    url, _ = server
    headers = {"Authorization": f"Bearer {TOKEN}"}
    body = {"query": "desert landform visitors", "k": 3}

    def one(_: int) -> list:
        with httpx.Client(timeout=20) as c:
            return c.post(url + "/v1/search/text", json=body, headers=headers).json()["hits"]

    with ThreadPoolExecutor(16) as ex:
        results = list(ex.map(one, range(16)))
    assert all(r == results[0] for r in results) and results[0][0]["url"] == "http://wiki.test/desert"
    again = one(0)
    assert again == results[0]
    text = httpx.get(url + "/stats", headers=headers).json()["backends"]["text"]
    assert text["served_calls"] >= 17
    # every request but the upstream one was a cache hit or joined the one in flight
    assert text.get("cache_hits", 0) + text.get("collapsed", 0) >= 16


def test_is_loopback():
    assert (
        is_loopback("127.0.0.1")
        and is_loopback("::1")
        and is_loopback("localhost")
        and is_loopback("127.3.0.1")
    )
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1") and not is_loopback("example.org")


def test_serve_cli_process(index_dir, tmp_path):
    cfg = tmp_path / "c.yaml"
    idx = index_dir / "idx"
    cfg.write_text(
        f"search:\n  text_backend: {{type: local, index_dir: '{idx}'}}\n"
        f"  image_backend: {{type: local, index_dir: '{idx}'}}\n"
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MY_SVC_TOKEN": "cli-token-xyz"}
    cmd = [sys.executable, "-m", "mmsearch_r1.cli", "search", "serve", "--config", str(cfg)]
    cmd += ["--port", str(port), "--token-env", "MY_SVC_TOKEN", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.2)
        body = {"query": "tundra", "k": 1}
        assert httpx.post(url + "/v1/text_search", json=body, timeout=10).status_code == 401
        r = httpx.post(
            url + "/v1/text_search", json=body, timeout=10, headers={"Authorization": "Bearer cli-token-xyz"}
        )
        assert r.status_code == 200 and r.json()["hits"][0]["url"] == "http://wiki.test/tundra"
        assert "tundra" in r.json()["hits"][0]["summary"].lower()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert "cli-token-xyz" not in err and "MY_SVC_TOKEN" in err  # names the variable, never the token
