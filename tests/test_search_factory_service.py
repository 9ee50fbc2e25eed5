"""The factory builds the service client trio from `type: service` alone (in a fresh interpreter)."""

from __future__ import annotations

import subprocess
import sys


def test_service_type_defaults_reader_and_summarizer_to_the_service() -> None:
    code = """
from mmsearch_r1.config import SearchConfig
from mmsearch_r1.search.factory import build_text_pipeline, build_image_backend
cfg = SearchConfig(text_backend={"type": "service", "url": "http://127.0.0.1:9"},
                   image_backend={"type": "service", "url": "http://127.0.0.1:9"})
parts = build_text_pipeline(cfg) + (build_image_backend(cfg),)
names = [type(p).__name__ + ":" + type(getattr(p, "inner", p)).__name__ for p in parts]
print(" ".join(names))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert text.count("Service") >= 4, text
    assert "Cached" not in text  # the server caches; the client does not cache again
