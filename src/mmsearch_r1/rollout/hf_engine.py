"""`HFEngine`: the default generation engine, transformers `generate` on a Qwen2.5-VL-style model (CPU or GPU).

One `generate` call per batch: prompts left-padded with the pad token, images passed as the concatenated
`pixel_values` / `image_grid_thw` of all requests in order, `mm_token_type_ids` marking the image pad tokens
(so the model's own rope-index function computes the 3-row mRoPE positions over the whole prompt, images
anywhere). Generation stops at `<|im_end|>` (looked up by text). Each row is cut after its first `<|im_end|>`
or at its own `max_new_tokens`; the tokens kept are exactly the ones generated.

Sampling (`params.greedy` False and temperature > 0): a logits processor draws each row's token from
`softmax(filter(logits / T))` (top-k, then top-p filtering) with the row's own `torch.Generator`, seeded from
(params.seed, request.key, request.turn_index), and leaves only that token finite; `generate` then runs in
greedy mode and picks it. So a trajectory's tokens do not depend on which other requests share its batch
(up to floating-point differences of padded batches), and the model's `generation_config` (temperature,
repetition penalty, ...) cannot alter sampling: those fields are set explicitly to neutral values.

Log-probs: `log_softmax(raw_logits / T)[token]` in float32 from `output_logits=True` (T = 1 for greedy),
i.e. the tempered, *unfiltered* distribution: top-k/top-p only decide which tokens may be drawn, and so does
the suppression of the vision tokens (`<|image_pad|>`, `<|vision_start|>`, `<|vision_end|>`, the video pad),
which are never sampled (a stray image pad in a turn would break the image features of every later turn). The trainer
recomputes exactly this quantity; `tests/test_rollout_logprobs.py` checks they agree within 1e-4.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from mmsearch_r1.rollout.engine import GenerationOutput, GenerationRequest, SamplingParams
from mmsearch_r1.rollout.rendering import RendererAdapter

log = logging.getLogger(__name__)


def row_seed(seed: int, key: str, turn_index: int) -> int:
    """The seed of one request's random stream (stable across processes)."""
    digest = hashlib.sha256(f"{seed}|{key}|{turn_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class _RowSampler:
    """Logits processor: samples each row with its own generator; leaves only the chosen token finite."""

    def __init__(self, seeds: list[int], params: SamplingParams) -> None:
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.params = params
        self.chosen: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        logits = scores.float() / self.params.temperature
        if self.params.top_k > 0:
            k = min(self.params.top_k, logits.shape[-1])
            kth = torch.topk(logits, k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.params.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
            cum = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
            drop_sorted = (
                cum - torch.softmax(sorted_logits, dim=-1)
            ) >= self.params.top_p  # keeps the top one
            drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
            logits = logits.masked_fill(drop, float("-inf"))
        probs = torch.softmax(logits, dim=-1).cpu()
        chosen = torch.stack(
            [torch.multinomial(probs[i], 1, generator=g)[0] for i, g in enumerate(self.generators)]
        ).to(scores.device)
        self.chosen.append(chosen)
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, chosen[:, None], 0.0)
        return out


class HFEngine:
    """transformers `generate` behind the `Engine` protocol (see the module docstring)."""

    def __init__(self, model: Any, renderer: Any) -> None:
        self.model = model
        self.adapter = RendererAdapter(renderer)
        ids = self.adapter.token_ids()
        self.stop_id = ids.im_end
        self.image_pad_id = ids.image_pad
        self.pad_id = self.adapter._special("endoftext", "<|endoftext|>")
        # vision tokens are never sampled: a stray image pad would break every later turn's image features
        self.suppressed = [ids.image_pad, ids.vision_start, ids.vision_end]
        video = getattr(model.config, "video_token_id", None)
        if isinstance(video, int) and video not in self.suppressed + [self.stop_id, self.pad_id]:
            self.suppressed.append(video)
        cfg_image_id = getattr(model.config, "image_token_id", None)
        if cfg_image_id is not None and cfg_image_id != self.image_pad_id:
            raise ValueError(
                f"model config image_token_id={cfg_image_id} but the tokenizer's <|image_pad|> is {self.image_pad_id}"
            )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def load_weights(self, named: Iterable[tuple[str, torch.Tensor]]) -> int:
        """Copy (name, tensor) pairs into the engine's model in place, one at a time; returns how many.

        Names are the HF model's state-dict names. An unknown name or a shape mismatch is a ValueError naming it,
        so a policy/engine mismatch cannot go unnoticed.
        """
        own = dict(self.model.named_parameters())
        own.update(dict(self.model.named_buffers()))
        n = 0
        for name, t in named:
            dst = own.get(name)
            if dst is None:
                raise ValueError(f"load_weights: the engine's model has no tensor {name!r}")
            if dst.shape != t.shape:
                raise ValueError(
                    f"load_weights: {name!r} has shape {tuple(t.shape)}, engine {tuple(dst.shape)}"
                )
            dst.copy_(t.to(device=dst.device, dtype=dst.dtype))
            n += 1
        return n

    def _images(self, requests: Sequence[GenerationRequest]) -> tuple[Any, Any]:
        pixels, grids = [], []
        for req in requests:
            if req.pixel_values is not None and req.image_grid_thw is not None:
                pv = req.pixel_values if isinstance(req.pixel_values, list) else [req.pixel_values]
                gr = req.image_grid_thw if isinstance(req.image_grid_thw, list) else [req.image_grid_thw]
                pixels += [p for p in pv if p is not None]
                grids += [torch.as_tensor(g).reshape(-1, 3) for g in gr if g is not None]
            elif req.images:
                pv, gr = self.adapter.renderer.encode_images(list(req.images))
                pixels.append(pv)
                grids.append(torch.as_tensor(gr).reshape(-1, 3))
        if not pixels:
            return None, None
        dtype = next(self.model.visual.parameters()).dtype if hasattr(self.model, "visual") else None
        pv = torch.cat([torch.as_tensor(p) for p in pixels]).to(self.device)
        return (pv.to(dtype) if dtype is not None else pv), torch.cat(grids).to(self.device)

    @torch.no_grad()
    def generate(
        self, requests: Sequence[GenerationRequest], params: SamplingParams
    ) -> list[GenerationOutput]:
        from transformers import GenerationConfig, LogitsProcessorList

        if not requests:
            return []
        max_new = max(r.max_new_tokens for r in requests)
        if min(r.max_new_tokens for r in requests) < 1:
            raise ValueError("every request needs max_new_tokens >= 1")
        width = max(len(r.prompt_ids) for r in requests)
        input_ids = torch.full((len(requests), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(requests), width), dtype=torch.long)
        for i, r in enumerate(requests):
            input_ids[i, width - len(r.prompt_ids) :] = torch.tensor(r.prompt_ids, dtype=torch.long)
            attention[i, width - len(r.prompt_ids) :] = 1
        input_ids, attention = input_ids.to(self.device), attention.to(self.device)
        pixel_values, grid = self._images(requests)

        gen_cfg = GenerationConfig(
            max_new_tokens=max_new,
            do_sample=False,
            num_beams=1,
            temperature=1.0,
            top_p=1.0,
            top_k=None,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            suppress_tokens=self.suppressed,
            eos_token_id=self.stop_id,
            pad_token_id=self.pad_id,
            output_logits=True,
            return_dict_in_generate=True,
        )
        sampler = None
        processors = LogitsProcessorList()
        if not params.is_greedy:
            base = params.seed if params.seed is not None else int(torch.randint(0, 2**62, (1,)).item())
            sampler = _RowSampler([row_seed(base, r.key, r.turn_index) for r in requests], params)
            processors.append(sampler)
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention}
        if hasattr(self.model.config, "vision_config"):  # Qwen-VL: mRoPE positions from the image pads
            kwargs["mm_token_type_ids"] = (input_ids == self.image_pad_id).int()
        if pixel_values is not None:
            kwargs.update(pixel_values=pixel_values, image_grid_thw=grid)
        out = self.model.generate(**kwargs, generation_config=gen_cfg, logits_processor=processors)

        new = out.sequences[:, width:].cpu()
        logits = torch.stack(out.logits, dim=1).float().cpu()  # [B, steps, V], raw
        logp = torch.log_softmax(logits / params.logprob_temperature, dim=-1)
        results = []
        for i, r in enumerate(requests):
            row = new[i].tolist()
            stop = row.index(self.stop_id) + 1 if self.stop_id in row else len(row)
            n = min(stop, r.max_new_tokens)
            ids = row[:n]
            if sampler is not None:
                picked = [int(c[i]) for c in sampler.chosen[:n]]
                if picked != ids:
                    raise RuntimeError(f"generate kept tokens other than the sampled ones for {r.key!r}")
            lps = [float(logp[i, t, tok]) for t, tok in enumerate(ids)]
            reason = "stop" if ids and ids[-1] == self.stop_id else "length"
            results.append(GenerationOutput(ids, lps, reason))
        return results
