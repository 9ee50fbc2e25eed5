"""Keys: redacted in saved configs and the wandb config, scrubbed from upstream echoes, sent only to their service."""

from __future__ import annotations

import io
import logging
import sys
import types
from pathlib import Path

import pytest
from PIL import Image

from _loopback import LoopbackServer, Reply, Request
from mmsearch_r1.config_io import ConfigError, load_config, save_config
from mmsearch_r1.search.base import ImageQuery, Page, SearchError, WebHit
from mmsearch_r1.search.secrets import REDACTED
from mmsearch_r1.search.web.jina import JinaReader
from mmsearch_r1.search.web.serpapi import SerpApiLens
from mmsearch_r1.tools.text_search import TextSearchTool
from mmsearch_r1.types import Answers, ImageData, Sample

JKEY = "jina_ECHOED_secret_55aa66bb77"
SKEY = "serp_UPLOAD_secret_0011223344"


def test_saved_config_has_no_key_and_a_redacted_config_is_refused_at_load(tmp_path: Path) -> None:
    key = "sk-config-SECRET-123456789"
    cfg = load_config(
        None,
        [
            "search.text_backend.type=serpapi_google",
            f"search.text_backend.api_key={key}",
            f"search.text_backend.reader.api_key={key}x",
        ],
    )
    out = save_config(cfg, tmp_path / "config.yaml")
    text = out.read_text()
    assert key not in text and text.count(REDACTED) == 2
    assert "serpapi_google" in text  # the rest is kept
    with pytest.raises(ConfigError, match=r"search\.text_backend\.api_key.*environment"):
        load_config(out)


def test_wandb_config_is_redacted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict = {}

    def init(**kw):  # wandb is optional and not installed here: record what would be uploaded
        seen.update(kw)
        return types.SimpleNamespace(log=lambda *a, **k: None, finish=lambda: None)

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    from mmsearch_r1.rl.metrics import MetricLogger

    config = {"search": {"text_backend": {"type": "serpapi_google", "api_key": "sk-wandb-SECRET-42424242"}}}
    MetricLogger(tmp_path, wandb=True, config=config).close()
    assert seen["config"]["search"]["text_backend"] == {"type": "serpapi_google", "api_key": REDACTED}
    assert (
        config["search"]["text_backend"]["api_key"] == "sk-wandb-SECRET-42424242"
    )  # caller's copy untouched


def test_key_echoed_in_a_jina_warning_reaches_no_log_or_exception(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    warning = f"Target URL returned error 403: request with credentials {JKEY} was refused"
    reply = Reply(json={"code": 200, "data": {"title": "t", "url": "u", "content": "x", "warning": warning}})

    class OneHit:
        name = "onehit"

        def search(self, query: str, k: int) -> list[WebHit]:
            return [WebHit(url="https://en.example.org/a", title="A", snippet="s", position=1)]

    class Echo:
        def summarize(self, page: Page, question: str, query: str) -> str:
            return page.text

    with LoopbackServer(lambda req: reply) as srv:
        reader = JinaReader(base_url=srv.url, api_key=JKEY)
        with pytest.raises(SearchError) as ei:
            reader.read("https://en.example.org/a")
        tool = TextSearchTool(OneHit(), reader, Echo(), top_k=1)
        res = tool("q", Sample(id="s", question="q", images=[], answers=Answers("a", [])))
    assert "returned error 403" in str(ei.value) and JKEY not in str(ei.value)
    assert not res.ok and JKEY not in str(res.parts) + str(res.error)
    assert "every page failed" in caplog.text and JKEY not in caplog.text


def _png() -> bytes:
    b = io.BytesIO()
    Image.new("RGB", (16, 16), (9, 9, 9)).save(b, format="PNG")
    return b.getvalue()


def test_serpapi_key_is_not_sent_to_an_uploader_on_another_origin() -> None:
    api_reply = Reply(json={"search_metadata": {"status": "Success"}, "visual_matches": []})

    def uploader(req: Request) -> Reply:
        return Reply(json={"image_id": "img-1"})

    def api_handler(req: Request) -> Reply:
        return uploader(req) if req.path == "/upload" else api_reply

    with LoopbackServer(api_handler) as api, LoopbackServer(uploader) as up:
        own = SerpApiLens(base_url=api.url + "/search.json", api_key=SKEY, upload_url=up.url + "/upload")
        own.search(ImageQuery(image=ImageData(bytes=_png())), 1)
        same = SerpApiLens(base_url=api.url + "/search.json", api_key=SKEY, upload_url=api.url + "/upload")
        same.search(ImageQuery(image=ImageData(bytes=_png())), 1)
        to_own = up.requests[0]
        to_api = [r for r in api.requests if r.path == "/upload"][0]
        searches = [r for r in api.requests if r.path == "/search.json"]
    assert "api_key" not in to_own.query and SKEY not in to_own.raw_path and SKEY.encode() not in to_own.body
    assert SKEY not in str(to_own.headers)
    assert to_api.query["api_key"] == SKEY  # SerpApi's own origin still gets it
    assert all(r.query["api_key"] == SKEY and r.query["image_id"] == "img-1" for r in searches)
