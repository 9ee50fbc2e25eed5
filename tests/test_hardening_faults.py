"""Trainer metrics count every search fault: a 2-step GRPO run whose search service sits behind a fault proxy
(500, 429, timeout, connection reset, malformed JSON) logs `search/{kind}/{errors,retries}` that add up to exactly
the faults the proxy injected. Real uvicorn search service over the local world, real HTTP, real training."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from _faults import KINDS, FaultProxy
from mmsearch_r1.config import SearchConfig
from mmsearch_r1.rl.metrics import SEARCH_COUNTERS, read_metrics
from mmsearch_r1.search.service import create_app_from_config
from mmsearch_r1.search.service_support import service_server
from test_trainer import build_world, forced_hook, train_config


def serve_search(world: dict[str, str]):
    """The search service over the world's local indexes on uvicorn (thread); returns (url, stop)."""
    from mmsearch_r1.config_io import parse_override

    spec = {
        k.split(".")[1]: parse_override(f"{k}={v}")[1] for k, v in world.items() if k.startswith("search.")
    }
    cfg = SearchConfig(
        top_k=int(spec["top_k"]), text_backend=spec["text_backend"], image_backend=spec["image_backend"]
    )
    app = create_app_from_config(cfg, token=None)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = service_server(app, log_level="warning")
    th = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    th.start()
    while not server.started:
        assert th.is_alive()
        time.sleep(0.01)

    def stop() -> None:
        server.should_exit = True
        th.join(10)
        sock.close()

    return f"http://127.0.0.1:{sock.getsockname()[1]}", stop


def faulty_search(proxy_url: str) -> dict[str, str]:
    spec = "{type: service, url: %s, timeout_s: 0.4, retry: {max_attempts: 3, backoff_s: 0.01, max_backoff_s: 0.02}}"
    return {"search.text_backend": spec % proxy_url, "search.image_backend": spec % proxy_url}


@pytest.mark.slow
def test_every_injected_fault_is_counted_in_the_trainer_metrics(tiny_model_dir, tmp_path) -> None:
    from mmsearch_r1.rl.trainer import train

    world = build_world(tmp_path / "world")
    url, stop = serve_search(world)
    try:
        with FaultProxy(url, rate=0.5, seed=3, delay_s=0.8) as proxy:
            cfg = train_config(tiny_model_dir, {**world, **faulty_search(proxy.url)}, tmp_path / "run")
            train(cfg, engine_hook=forced_hook())
            injected = dict(proxy.injected)
    finally:
        stop()
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    total = {
        name: sum(
            r.get(f"search/{kind}/{name}", 0.0)
            for r in rows
            for kind in ("image", "text", "read", "summarize")
        )
        for name in SEARCH_COUNTERS
    }
    assert sum(injected.values()) >= 2 and set(injected) <= set(KINDS)
    assert total["errors"] == sum(injected.values())  # every failed attempt, transient or not
    assert total["retries"] == sum(v for k, v in injected.items() if k != "malformed_json")
    assert total["calls"] > total["errors"]
