"""The torch-free layers must import without torch (the search service and data tools start fast)."""

from __future__ import annotations

import subprocess
import sys

import pytest

TORCH_FREE = [
    "mmsearch_r1.types",
    "mmsearch_r1.config",
    "mmsearch_r1.registry",
    "mmsearch_r1.protocol",
    "mmsearch_r1.protocol_original",
    "mmsearch_r1.turns",
    "mmsearch_r1.config_io",
    "mmsearch_r1.config_legacy",
    "mmsearch_r1.prompt_layout",
    "mmsearch_r1.reward",
    "mmsearch_r1.data",
    "mmsearch_r1.search",
    "mmsearch_r1.tools",
]


@pytest.mark.parametrize("module", TORCH_FREE)
def test_imports_without_torch(module: str) -> None:
    code = f"import sys, {module}; assert 'torch' not in sys.modules, 'torch imported'; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
