"""`HFEngine`: the default generation engine, a decode loop over a transformers Qwen2.5-VL-style model (CPU or GPU).

One batch per `generate` call. Each row is prefilled once, then decoded one token per forward; K/V go into a
preallocated buffer (`hf_cache.BufferLayer`); positions are explicit: the 3-row mRoPE positions of the model's own
rope-index function (`model.compute_position_ids`) for the prefill, the next text position while decoding.
Generation stops at `<|im_end|>` (looked up by text) or at the row's own `max_new_tokens`; the tokens kept are
exactly the ones chosen. Rows that are done leave the batch once a quarter of it is.

KV reuse across turns (`kv_reuse=True`, `rollout.hf_kv_reuse`): after a turn the engine keeps, per trajectory key,
the ids it has K/V for (the prompt and the turn's tokens fed back), those K/V, the next mRoPE position and how many
of the request's images they contain (`hf_cache.KVStore`). A later request with the same key whose `prompt_ids`
start with those ids prefills only the rest (the tool turn's tokens; the vision encoder runs only on its images).
Anything else is a miss and a full prefill: an unknown key, a prefix that does not match, a `turn_index` 0 request
(a new trajectory: the key's old entry is dropped), an entry evicted by the byte bound, or changed weights
(`load_weights`, or an in-place update of the model's parameters seen through their version counters: every entry
is dropped). `cache_stats` counts hits, misses, prefill tokens saved, evictions and invalidations. A batch mixes
rows of any cached and new lengths: row i is `[pad][cached c_i][pad][new s_i]`, the attention mask 0 on every pad. Rows with
nothing cached and the same prompt and pixels (a GRPO group's first turn) are prefilled once, their K/V copied.

Sampling (`params.greedy` False and temperature > 0): `_RowSampler` draws each row's token from
`softmax(filter(logits / T))` (top-k, then top-p filtering) with the row's own `torch.Generator`, seeded from
(params.seed, request.key, request.turn_index), one draw per row and step (the same draws as before this loop). So a trajectory's tokens do not depend
on which other requests share its batch (up to floating-point differences of padded batches). The model's
`generation_config` (temperature, repetition penalty, ...) plays no part. Greedy: the arg-max.

Log-probs: `log_softmax(raw_logits / T)[token]` in float32 (T = 1 for greedy), i.e. the tempered, *unfiltered*
distribution: top-k/top-p only decide which tokens may be drawn, and so does the suppression of the vision tokens
(`<|image_pad|>`, `<|vision_start|>`, `<|vision_end|>`, the video pad), which are never chosen (a stray image pad
in a turn would break the image features of every later turn). The trainer recomputes exactly this quantity;
`tests/test_rollout_hf.py` and `tests/test_hf_kv_reuse.py` check they agree within 1e-4.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from mmsearch_r1.model.positions import compute_position_ids
from mmsearch_r1.rollout.engine import GenerationOutput, GenerationRequest, SamplingParams
from mmsearch_r1.rollout.hf_cache import KVEntry, KVStore, buffer_cache, dedupe_rows
from mmsearch_r1.rollout.rendering import RendererAdapter

log = logging.getLogger(__name__)


def row_seed(seed: int, key: str, turn_index: int) -> int:
    """The seed of one request's random stream (stable across processes)."""
    digest = hashlib.sha256(f"{seed}|{key}|{turn_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class _RowSampler:
    """Samples each row from `softmax(filter(scores / T))` with the row's own generator (one draw per row and step:
    `torch.multinomial` on the CPU)."""

    def __init__(self, seeds: list[int], params: SamplingParams) -> None:
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.params = params

    def filtered(self, scores: torch.Tensor) -> torch.Tensor:
        """`scores / T` with top-k, then top-p applied (removed tokens -inf)."""
        logits = scores.float() / self.params.temperature
        if self.params.top_k > 0:
            k = min(self.params.top_k, logits.shape[-1])
            kth = torch.topk(logits, k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.params.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
            p = torch.softmax(sorted_logits, dim=-1)
            drop_sorted = (p.cumsum(dim=-1) - p) >= self.params.top_p  # keeps the top one
            drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
            logits = logits.masked_fill(drop, float("-inf"))
        return logits

    def sample(self, scores: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(self.filtered(scores), dim=-1).cpu()
        chosen = [torch.multinomial(probs[i], 1, generator=g)[0] for i, g in enumerate(self.generators)]
        return torch.stack(chosen).to(scores.device)


class HFEngine:
    """A decode loop behind the `Engine` protocol (see the module docstring).

    `kv_reuse`: keep each trajectory's K/V between its turns; `kv_cache_bytes`: the most bytes of K/V kept.
    """

    def __init__(
        self, model: Any, renderer: Any, *, kv_reuse: bool = True, kv_cache_bytes: int = 4 << 30
    ) -> None:
        self.model = model
        self.kv_reuse = kv_reuse
        self.store = KVStore(kv_cache_bytes)
        # rows whose prefill another row of the same batch did (same prompt and pixels, nothing cached)
        self.shared_prefill_rows = 0
        self._weights_version = self._param_version()
        self.adapter = RendererAdapter(renderer)
        ids = self.adapter.token_ids()
        self.stop_id = ids.im_end
        self.image_pad_id = ids.image_pad
        self.merge = ids.merge_size
        self.pad_id = self.adapter._special("endoftext", "<|endoftext|>")
        # vision tokens are never sampled: a stray image pad would break every later turn's image features
        self.suppressed = [ids.image_pad, ids.vision_start, ids.vision_end]
        video = getattr(model.config, "video_token_id", None)
        if isinstance(video, int) and video not in self.suppressed + [self.stop_id, self.pad_id]:
            self.suppressed.append(video)
        kinds = set(getattr(model.config.get_text_config(), "layer_types", None) or ["full_attention"])
        if kinds != {"full_attention"}:  # the K/V buffer (hf_cache.BufferLayer) keeps every position
            raise ValueError(f"HFEngine supports full-attention layers only; the model has {sorted(kinds)}")
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
        self.store.clear()  # K/V of the old weights
        self._weights_version = self._param_version()
        return n

    def release_kv(self) -> None:
        """Free the K/V kept between turns (when no trajectory will continue, e.g. before a training update)."""
        self.store.clear(invalidated=False)

    @property
    def cache_stats(self) -> dict[str, int]:
        """KV reuse counters (`hf_cache.KVStore`), plus the entries and bytes held now."""
        return {
            **self.store.stats,
            "entries": len(self.store),
            "bytes": self.store.bytes,
            "shared_prefill_rows": self.shared_prefill_rows,
        }

    def _param_version(self) -> int:
        return sum(p._version for p in self.model.parameters())

    def _images(self, req: GenerationRequest, skip: int) -> tuple[int, Any, Any]:
        """(number of images of the request, pixel values and (k, 3) grids of its images from `skip` on)."""
        if req.pixel_values is not None and req.image_grid_thw is not None:
            pv = req.pixel_values if isinstance(req.pixel_values, list) else [req.pixel_values]
            gr = req.image_grid_thw if isinstance(req.image_grid_thw, list) else [req.image_grid_thw]
            if len(pv) != len(gr):
                raise ValueError(f"request {req.key!r}: {len(pv)} pixel_values chunks, {len(gr)} grid chunks")
            per_image: list[tuple[torch.Tensor, torch.Tensor]] = []
            for p, g in zip(pv, gr, strict=True):
                if p is None or g is None:
                    continue
                g = torch.as_tensor(g).reshape(-1, 3)
                p = torch.as_tensor(p)
                sizes = g.prod(-1).tolist()
                if sum(sizes) != p.shape[0]:
                    raise ValueError(
                        f"request {req.key!r}: pixel_values has {p.shape[0]} patches, its grids {sum(sizes)}"
                    )
                per_image += list(zip(torch.split(p, sizes), g, strict=True))
            rest = per_image[skip:]
            if not rest:
                return len(per_image), None, None
            return len(per_image), torch.cat([p for p, _ in rest]), torch.stack([g for _, g in rest])
        n = len(req.images)
        if skip >= n:
            return n, None, None
        pv, gr = self.adapter.renderer.encode_images(list(req.images[skip:]))
        return n, torch.as_tensor(pv), torch.as_tensor(gr).reshape(-1, 3)

    def _row(self, req: GenerationRequest) -> dict[str, Any]:
        """What row `req` prefills: the cache entry it continues (or None), its new ids, images and positions."""
        entry = self.store.lookup(req.key, req.prompt_ids, req.turn_index) if self.kv_reuse else None
        c = len(entry.ids) if entry is not None else 0
        new = list(req.prompt_ids[c:])
        n_images, pv, grid = self._images(req, entry.n_images if entry is not None else 0)
        pads = sum(1 for t in new if t == self.image_pad_id)
        want = int(grid.prod(-1).sum()) // self.merge**2 if grid is not None else 0
        if pads != want:
            where = f"after the {c} cached tokens" if entry is not None else "in the prompt"
            raise ValueError(
                f"request {req.key!r} turn {req.turn_index}: {pads} image pad tokens {where}, "
                f"but its images give {want}"
            )
        ids = torch.tensor([new], dtype=torch.long)
        pos = compute_position_ids(self.model, ids, grid)  # (3, 1, s), or (1, s) for a text-only model
        pos = pos[:, 0] if pos.dim() == 3 else pos
        if entry is not None:  # the rope index is shift-invariant: continue from where the row left off
            pos = pos + entry.next_pos
        return {"entry": entry, "new": new, "n_images": n_images, "pv": pv, "grid": grid, "pos": pos}

    def _check_weights(self) -> None:
        """Drop every cached K/V if the model's parameters were changed in place since the last call."""
        v = self._param_version()
        if v != self._weights_version:
            self.store.clear()
            self._weights_version = v

    @torch.no_grad()
    def generate(
        self, requests: Sequence[GenerationRequest], params: SamplingParams
    ) -> list[GenerationOutput]:
        if not requests:
            return []
        if min(r.max_new_tokens for r in requests) < 1:
            raise ValueError("every request needs max_new_tokens >= 1")
        for r in requests:
            if not r.prompt_ids:
                raise ValueError(f"request {r.key!r} turn {r.turn_index}: empty prompt_ids")
        if self.model.training and any(
            getattr(m, "gradient_checkpointing", False) for m in self.model.modules()
        ):
            raise ValueError(
                "HFEngine.generate: the model is in train mode with gradient checkpointing, which drops the K/V "
                "cache; call model.eval() first"
            )
        if self.kv_reuse:
            self._check_weights()
        rows = [self._row(r) for r in requests]
        uniq, idx = dedupe_rows(rows)
        self.shared_prefill_rows += len(rows) - len(uniq)
        max_new = max(r.max_new_tokens for r in requests)
        cache, mask, logits, next_pos = self._prefill([rows[u] for u in uniq], max_new)
        if len(uniq) < len(rows):  # rows with the same prompt and images: one prefill, K/V copied
            sel = torch.tensor(idx, device=mask.device)
            for layer in cache.layers:
                layer.select(sel)
            mask, logits, next_pos = mask[sel], logits[sel], next_pos[sel]
        n_rows = rows[0]["pos"].shape[0]  # 3 mRoPE rows, or 1 for a text-only model
        toks, lps = self._decode(requests, rows, params, cache, mask, logits, next_pos, n_rows)
        results = []
        for t, lp_row in zip(toks, lps, strict=True):
            reason = "stop" if t and t[-1] == self.stop_id else "length"
            results.append(GenerationOutput(t, lp_row, reason))
        return results

    def _forward(
        self, inp: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, cache: Any, **kw: Any
    ) -> Any:
        """Logits of the last position of each row; `pos` is (rows, B, T) and K/V go into `cache`."""
        out = self.model(
            input_ids=inp,
            attention_mask=mask,
            position_ids=pos if pos.shape[0] == 3 else pos[0],
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
            **kw,
        )
        return out.logits[:, -1, :]

    def _prefill(self, rows: list[dict[str, Any]], max_new: int) -> tuple[Any, Any, Any, Any]:
        """One forward over every row's new tokens, after its cached K/V (layout in the module docstring).
        Returns (cache, attention mask over the whole buffer, last logits, next text position per row)."""
        dev = self.device
        B, n_rows = len(rows), rows[0]["pos"].shape[0]
        cached = [len(x["entry"].ids) if x["entry"] is not None else 0 for x in rows]
        C, S = max(cached), max(len(x["new"]) for x in rows)
        cap = C + S + max_new
        ids = torch.full((B, S), self.pad_id, dtype=torch.long)
        mask = torch.zeros((B, cap), dtype=torch.long)
        pos = torch.zeros((n_rows, B, S), dtype=torch.long)
        n_layers = self.model.config.get_text_config().num_hidden_layers
        preload: list[list[tuple]] = [[] for _ in range(n_layers)]
        for i, (x, c) in enumerate(zip(rows, cached, strict=True)):
            s = len(x["new"])
            ids[i, S - s :] = torch.tensor(x["new"], dtype=torch.long)
            mask[i, C - c : C] = 1
            mask[i, C + S - s : C + S] = 1
            pos[:, i, S - s :] = x["pos"]
            if x["entry"] is not None:
                for li, (k, v) in enumerate(x["entry"].kv):
                    preload[li].append((i, C - c, k, v))
        next_pos = pos[:, :, -1].max(0).values + 1  # (B,): every row's last new token is a real one
        mask = mask.to(dev)
        cache = buffer_cache(n_layers, cap, C, preload)
        kwargs: dict[str, Any] = {}
        pvs = [x["pv"] for x in rows if x["pv"] is not None]
        if pvs:
            dtype = next(self.model.visual.parameters()).dtype if hasattr(self.model, "visual") else None
            pv = torch.cat(pvs).to(dev)
            kwargs["pixel_values"] = pv.to(dtype) if dtype is not None else pv
            kwargs["image_grid_thw"] = torch.cat([x["grid"] for x in rows if x["grid"] is not None]).to(dev)
        logits = self._forward(ids.to(dev), mask[:, : C + S], pos.to(dev), cache, **kwargs)
        return cache, mask, logits, next_pos.to(dev)

    def _decode(
        self,
        requests: Sequence[GenerationRequest],
        rows: list[dict[str, Any]],
        params: SamplingParams,
        cache: Any,
        mask: torch.Tensor,
        logits: torch.Tensor,
        next_pos: torch.Tensor,
        n_rows: int,
    ) -> tuple[list[list[int]], list[list[float]]]:
        """Choose a token per row and step and feed it back, until every row stopped or hit its limit.

        A row's last token is fed back with the others' next step, so its K/V are complete then. Once a quarter of
        the batch is done, the done rows leave it (their K/V kept first, with reuse on): the buffer, mask, positions
        and samplers keep only the live rows. Returns (tokens, log-probs) per request.
        """
        dev, B = logits.device, len(requests)
        length = cache.get_seq_length()
        sampler = None
        if not params.is_greedy:
            base = params.seed if params.seed is not None else int(torch.randint(0, 2**62, (1,)).item())
            sampler = _RowSampler([row_seed(base, r.key, r.turn_index) for r in requests], params)
        banned = torch.zeros(logits.shape[-1], dtype=torch.bool, device=dev)
        banned[[t for t in self.suppressed if t < logits.shape[-1]]] = True
        live = list(range(B))  # the request of each batch row
        active = [True] * B
        toks: list[list[int]] = [[] for _ in range(B)]
        lps: list[list[float]] = [[] for _ in range(B)]
        fed = [0] * B
        for _ in range(max(r.max_new_tokens for r in requests)):
            raw = logits.float()
            scores = raw.masked_fill(banned, float("-inf"))
            if sampler is not None:
                chosen = sampler.sample(scores)
            else:
                chosen = scores.argmax(-1)
            lp = torch.log_softmax(raw / params.logprob_temperature, dim=-1).gather(1, chosen[:, None])[:, 0]
            feed = [active[r] for r in live]
            for r, tok, val in zip(live, chosen.tolist(), lp.tolist(), strict=True):
                if active[r]:
                    toks[r].append(tok)
                    lps[r].append(val)
                    if tok == self.stop_id or len(toks[r]) >= requests[r].max_new_tokens:
                        active[r] = False
            if not any(active[r] for r in live):
                break
            f = torch.tensor(feed, device=dev)
            inp = torch.where(f, chosen, torch.full_like(chosen, self.pad_id))[:, None]
            mask[:, length] = f.long()
            length += 1
            step_pos = next_pos.view(1, -1, 1).expand(n_rows, -1, 1)
            logits = self._forward(inp, mask[:, :length], step_pos, cache)
            next_pos += f.long()
            for r, x in zip(live, feed, strict=True):
                fed[r] += x
            done = [j for j, r in enumerate(live) if not active[r]]
            if done and 4 * len(done) >= len(live):
                for j in done:
                    self._keep(
                        requests[live[j]],
                        rows[live[j]],
                        toks[live[j]][: fed[live[j]]],
                        mask[j, :length],
                        cache,
                        j,
                        next_pos[j],
                    )
                keep = [j for j, r in enumerate(live) if active[r]]
                sel = torch.tensor(keep, device=dev)
                for layer in cache.layers:
                    layer.select(sel)
                mask, logits, next_pos = mask[sel], logits[sel], next_pos[sel]
                if sampler is not None:
                    sampler.generators = [sampler.generators[j] for j in keep]
                live = [live[j] for j in keep]
        for j, r in enumerate(live):
            self._keep(requests[r], rows[r], toks[r][: fed[r]], mask[j, :length], cache, j, next_pos[j])
        return toks, lps

    def _keep(
        self,
        req: GenerationRequest,
        row: dict[str, Any],
        fed_tokens: list[int],
        mask_row: torch.Tensor,
        cache: Any,
        j: int,
        next_pos: torch.Tensor,
    ) -> None:
        """With reuse on, store batch row j's K/V (its unmasked columns) under the request's key."""
        if not self.kv_reuse or not req.key:
            return
        cols = mask_row.nonzero().squeeze(1)
        ids = list(req.prompt_ids) + fed_tokens
        if len(cols) != len(ids):
            raise RuntimeError(f"KV columns ({len(cols)}) and ids ({len(ids)}) of {req.key!r} disagree")
        kv = [layer.row(j, cols) for layer in cache.layers]
        nbytes = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)
        self.store.put(req.key, KVEntry(ids, kv, int(next_pos), row["n_images"], nbytes))
