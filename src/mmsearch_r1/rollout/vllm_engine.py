"""`VLLMEngine`: vLLM behind the `Engine` contract, colocated in the calling process (one instance per rank).

Token space: each request goes to vLLM as `TokensPrompt(prompt_token_ids=..., multi_modal_data={"image": [...]})`;
nothing is re-tokenized. vLLM's Qwen2-VL processor expands every single `<|image_pad|>` into the image's
t*h*w/merge^2 pads itself, so each pad run our renderer already expanded is collapsed to one pad first (the
run count must equal the number of images). The sampled ids come back as vLLM produced them; generation stops
at `<|im_end|>` only (`stop_token_ids`, with the model's other EOS ids ignored), and the vision tokens are
never sampled (`bad_words`), as in the HF engine.

Sampling: `temperature`, `top_p`, `top_k` as given, greedy as temperature 0, and a per-request seed
`hf_engine.row_seed(params.seed, request.key, request.turn_index)`, so a request's tokens do not depend on
which other requests run beside it. The model's own generation config is ignored (`generation_config="vllm"`).

Log-probs: vLLM is built with `logprobs_mode="raw_logprobs"`: the log-prob of each sampled token under
`log_softmax(logits)` of the raw logits, taken before the bad-words mask, temperature and top-k/top-p. That is
exactly the trainer's `log_softmax(logits / T)` when T = 1 (the paper's setting) and for greedy decoding
(T = 1 by contract), whatever the top-k/top-p. vLLM's other exact mode, `processed_logprobs`, is taken after
the bad-words mask and top-k/top-p renormalization, so it would differ from the trainer by the mass of the
suppressed tokens; and no mode gives the unfiltered tempered value. So sampling with T != 1 is refused (a
ValueError naming the temperature); docs/rollout.md says why.

Requests go in one at a time: `submit(request, params)` returns a `concurrent.futures.Future` at once; a
background thread steps vLLM's `LLMEngine` (continuous batching) and resolves each future when its request
finishes, so the agent loop can hand a trajectory back to generation the moment its tool result arrives.
`generate(requests, params)` submits all and waits (the batch contract).

Colocated training: the engine runs vLLM in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`; executor "uni",
or "external_launcher" under torchrun so each rank has its own instance). `load_weights(named)` hands
(name, tensor) pairs one at a time to vLLM's in-place weight reload (the worker's `reload_weights` with a
weights iterator: HF names, mapped by the model's own `load_weights` to its fused layout, then the same
post-load processing as at start-up, e.g. the CPU backend's repacked linear weights). `sleep()` / `wake_up()` use vLLM's sleep mode level 1 on CUDA (KV cache released, weights offloaded
while the trainer updates); on CPU there is no device memory to release and they do nothing (`sleeps` says
which). All control calls need the engine idle (no request in flight).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import queue
import sys
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from mmsearch_r1.rollout.engine import GenerationOutput, GenerationRequest, SamplingParams
from mmsearch_r1.rollout.hf_engine import row_seed

log = logging.getLogger(__name__)

VISION_TOKENS = ("<|image_pad|>", "<|vision_start|>", "<|vision_end|>", "<|video_pad|>")


def collapse_image_pads(ids: Sequence[int], pad_id: int) -> tuple[list[int], int]:
    """Each run of `pad_id` replaced by one `pad_id`; returns (ids, number of runs)."""
    out: list[int] = []
    runs = 0
    for t in ids:
        if t == pad_id:
            if out and out[-1] == pad_id:
                continue
            runs += 1
        out.append(t)
    return out, runs


def pixel_budget(image_processor: Any) -> tuple[int, int] | None:
    """(min_pixels, max_pixels) of a Qwen2-VL image processor (its `size` edges or attributes), or None."""
    size = getattr(image_processor, "size", None)
    lo, hi = (
        getattr(size, "shortest_edge", None),
        getattr(size, "longest_edge", None),
    )  # transformers' SizeDict
    if isinstance(size, dict):
        lo, hi = size.get("shortest_edge", lo), size.get("longest_edge", hi)
    lo = lo if lo is not None else getattr(image_processor, "min_pixels", None)
    hi = hi if hi is not None else getattr(image_processor, "max_pixels", None)
    return (int(lo), int(hi)) if lo is not None and hi is not None else None


def vllm_sampling_kwargs(params: SamplingParams, key: str, turn_index: int) -> dict[str, Any]:
    """vLLM `SamplingParams` fields for one request (see the module docstring); ValueError for T != 1."""
    if params.is_greedy:
        return {"temperature": 0.0}
    if params.temperature != 1.0:
        raise ValueError(
            f"the vLLM engine samples only at temperature 1 (got {params.temperature}): it records "
            "log_softmax(logits) before temperature (logprobs_mode=raw_logprobs), which equals the trainer's "
            "log_softmax(logits / T) only for T = 1; use rollout.engine=hf for other temperatures"
        )
    base = params.seed if params.seed is not None else int.from_bytes(os.urandom(7), "little")
    return {
        "temperature": 1.0,
        "top_p": params.top_p,
        "top_k": params.top_k if params.top_k > 0 else 0,
        "seed": row_seed(base, key, turn_index),
    }


class VLLMEngine:
    """vLLM in this process behind the `Engine` protocol (module docstring)."""

    def __init__(
        self,
        model_path: str,
        renderer: Any,
        *,
        dtype: str = "float32",
        max_model_len: int = 8192,
        gpu_memory_utilization: float = 0.5,
        max_num_seqs: int = 64,
        seed: int = 0,
        max_images: int = 16,
        enforce_eager: bool = False,
        kv_cache_bytes: int | None = None,
    ) -> None:
        # in this process (no engine-core child), so load_weights hands tensors over by reference
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        import torch

        if not torch.cuda.is_available() and "llvmlite" in sys.modules:
            raise RuntimeError(
                "the vLLM CPU engine must start before numba/llvmlite is imported (bm25s imports it): vLLM's "
                "CPU start-up scans every loaded module and fails on llvmlite's; build the engine first"
            )
        import torch.distributed as dist
        from vllm import LLM

        from mmsearch_r1.rollout.rendering import RendererAdapter

        self.adapter = RendererAdapter(renderer)
        ids = self.adapter.token_ids()
        self.stop_id = ids.im_end
        self.image_pad_id = ids.image_pad
        self.cuda = torch.cuda.is_available()
        self.sleeps = self.cuda  # sleep mode needs CUDA
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        kwargs: dict[str, Any] = dict(
            model=str(model_path),
            dtype=dtype,
            max_model_len=int(max_model_len),
            max_num_seqs=int(max_num_seqs),
            seed=int(seed),
            logprobs_mode="raw_logprobs",
            generation_config="vllm",
            distributed_executor_backend="external_launcher" if distributed else "uni",
            enforce_eager=enforce_eager,
            enable_sleep_mode=self.sleeps,
            gpu_memory_utilization=float(gpu_memory_utilization),  # on CPU: the share of host memory
        )
        if not self.cuda:
            # vLLM's CPU runner fails ("CPU Generator does not use offset") when a seeded request's prefill is
            # split over steps and its draw is rewound; whole prefills avoid the rewind
            kwargs["enable_chunked_prefill"] = False
        if kv_cache_bytes:
            kwargs["kv_cache_memory_bytes"] = int(kv_cache_bytes)
        config = json.loads((Path(model_path) / "config.json").read_text(encoding="utf-8"))
        self.multimodal = "vision_config" in config
        window = config.get("text_config", config).get("max_position_embeddings") or config.get(
            "max_position_embeddings"
        )
        if window and int(window) < kwargs["max_model_len"]:  # the model's own limit; longer requests fail
            log.info("vLLM max_model_len %d -> %d (the model's window)", kwargs["max_model_len"], int(window))
            kwargs["max_model_len"] = int(window)
        if self.multimodal:
            kwargs["limit_mm_per_prompt"] = {"image": int(max_images), "video": 0}
            budget = pixel_budget(renderer.image_processor)
            if budget is not None:  # vLLM's processor must give each image the grid our renderer gave it
                kwargs["mm_processor_kwargs"] = {"min_pixels": budget[0], "max_pixels": budget[1]}
        self.llm = LLM(**kwargs)
        self.engine = self.llm.llm_engine
        vocab = renderer.tokenizer.get_vocab()
        self._bad_words = [t for t in VISION_TOKENS if t in vocab]  # never sampled, as in the HF engine
        self._ids = itertools.count()
        self._futures: dict[str, tuple[Future, GenerationRequest]] = {}
        self._inbox: queue.Queue = queue.Queue()
        self._lock = threading.Lock()  # held while vLLM steps or a control call runs
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="vllm-engine", daemon=True)
        self._thread.start()
        self.asleep = False

    # ================================================================== requests
    def _prompt(self, req: GenerationRequest) -> dict[str, Any]:
        ids, runs = collapse_image_pads(req.prompt_ids, self.image_pad_id)
        if runs != len(req.images):
            raise ValueError(
                f"request {req.key!r} turn {req.turn_index}: {runs} image pad runs for {len(req.images)} images"
            )
        prompt: dict[str, Any] = {"prompt_token_ids": ids}
        if req.images:
            if not self.multimodal:
                raise ValueError(f"request {req.key!r} has images but the served model is text-only")
            prompt["multi_modal_data"] = {"image": list(req.images)}
        return prompt

    def _params(self, req: GenerationRequest, params: SamplingParams) -> Any:
        from vllm import SamplingParams as VParams

        if req.max_new_tokens < 1:
            raise ValueError(f"request {req.key!r}: max_new_tokens must be >= 1, got {req.max_new_tokens}")
        return VParams(
            **vllm_sampling_kwargs(params, req.key, req.turn_index),
            max_tokens=int(req.max_new_tokens),
            stop_token_ids=[self.stop_id],
            ignore_eos=True,  # stop at <|im_end|> only, like the HF engine
            logprobs=0,  # the sampled token's log-prob only
            detokenize=False,
            skip_special_tokens=False,
            bad_words=list(self._bad_words) or None,
        )

    def submit(self, req: GenerationRequest, params: SamplingParams) -> Future:
        """Queue one request; the future resolves to its `GenerationOutput`."""
        if self._closed:
            raise RuntimeError("the vLLM engine is closed")
        if self.asleep:
            raise RuntimeError("the vLLM engine is asleep: wake_up() before generating")
        fut: Future = Future()
        item = (f"r{next(self._ids)}", self._prompt(req), self._params(req, params), req, fut)
        self._inbox.put(item)
        return fut

    def generate(
        self, requests: Sequence[GenerationRequest], params: SamplingParams
    ) -> list[GenerationOutput]:
        futures = [self.submit(r, params) for r in requests]
        return [f.result() for f in futures]

    def _output(self, out: Any, req: GenerationRequest) -> GenerationOutput:
        comp = out.outputs[0]
        ids = [int(t) for t in comp.token_ids]
        lps = [float(d[t].logprob) for d, t in zip(comp.logprobs, ids, strict=True)]
        reason = "stop" if ids and ids[-1] == self.stop_id else "length"
        if comp.finish_reason == "stop" and reason != "stop":
            raise RuntimeError(
                f"vLLM stopped {req.key!r} on something other than <|im_end|>: {comp.stop_reason}"
            )
        return GenerationOutput(ids, lps, reason)

    def _run(self) -> None:
        """Background thread: add queued requests, step vLLM, resolve finished futures."""
        while True:
            busy = bool(self._futures)
            try:
                items = [self._inbox.get(timeout=None if not busy else 0)]
            except queue.Empty:
                items = []
            while True:
                try:
                    items.append(self._inbox.get_nowait())
                except queue.Empty:
                    break
            if any(i is None for i in items):
                for fut, _ in self._futures.values():
                    fut.set_exception(RuntimeError("the vLLM engine was closed"))
                return
            with self._lock:
                for rid, prompt, vparams, req, fut in items:
                    try:
                        self.engine.add_request(rid, prompt, vparams)
                        self._futures[rid] = (fut, req)
                    except Exception as e:  # a bad request fails its own future, not the engine
                        fut.set_exception(e)
                if not self._futures:
                    continue
                try:
                    outs = self.engine.step()
                except Exception as e:
                    log.exception("vLLM step failed")
                    for fut, _ in self._futures.values():
                        fut.set_exception(e)
                    self._futures.clear()
                    continue
            for out in outs:
                if out.finished and out.request_id in self._futures:
                    fut, req = self._futures.pop(out.request_id)
                    try:
                        fut.set_result(self._output(out, req))
                    except Exception as e:
                        fut.set_exception(e)

    # ================================================================== weights and memory
    def _idle(self, what: str) -> None:
        if self._futures or not self._inbox.empty():
            raise RuntimeError(f"vLLM engine: {what} while requests are in flight")

    def load_weights(self, named: Iterable[tuple[str, Any]]) -> int:
        """Load (HF name, tensor) pairs into the vLLM model one at a time; returns how many. Resets the prefix
        cache (cached KV blocks were computed with the old weights)."""
        with self._lock:
            self._idle("load_weights")
            count = [0]

            def counted():
                for name, t in named:
                    count[0] += 1
                    yield name, t

            # the worker's in-place reload: restores loadable parameters, loads, re-runs the kernel repacking
            self.llm.collective_rpc(
                "reload_weights", kwargs={"weights_iterator": counted(), "is_checkpoint_format": True}
            )
            self.engine.reset_prefix_cache()
        return count[0]

    def named_weights(self) -> dict[str, Any]:
        """CPU copies of the vLLM model's parameters by vLLM's own names (for tests and checks)."""
        with self._lock:
            return self.llm.apply_model(
                lambda m: {n: p.detach().float().cpu().clone() for n, p in m.named_parameters()}
            )[0]

    def sleep(self) -> None:
        """Release the KV cache (and offload weights) for the trainer's update; no-op off CUDA."""
        with self._lock:
            self._idle("sleep")
            if self.sleeps and not self.asleep:
                self.llm.sleep(level=1)
            self.asleep = self.sleeps

    def wake_up(self) -> None:
        with self._lock:
            if self.asleep:
                self.llm.wake_up()
            self.asleep = False

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._inbox.put(None)
        self._thread.join(timeout=60)
