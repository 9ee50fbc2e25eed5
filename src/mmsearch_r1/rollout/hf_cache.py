"""Key/value state of the HF engine: a preallocated batch buffer for one `generate` call, and the per-trajectory
store that lets a trajectory's next turn prefill only what was appended since its last turn.

`BufferLayer` is a transformers cache layer over one tensor per K and V of shape (batch, kv heads, capacity,
head dim), allocated at the first forward of the call (so the model's head counts need not be known), with the
rows' cached K/V copied in at their slots; each forward writes its new K/V after the current length (no
`torch.cat` growth) and attends over the filled prefix. Batch layout of a call: row i is
`[pad to C - c_i][cached c_i][pad to S - s_i][new s_i][decoded ...]`, C the longest cached part, S the longest
new part; a 2-D attention mask is 0 on every pad.

`KVStore` keeps, per trajectory key, the token ids whose K/V it holds, those K/V (per layer, (heads, n, dim)), the
next text position (mRoPE continues from it) and how many of the request's images those ids contain. LRU with a
bound on bytes; `clear()` drops everything (new weights). Counters: `hits`, `misses`, `prefill_tokens_saved`,
`evicted` (dropped by the bound), `invalidated` (dropped because the weights changed).

`dedupe_rows`: which rows of a batch can share one prefill (nothing cached, same new ids and pixels).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicLayer


class BufferLayer(DynamicLayer):
    """One layer's K/V for one generate call: preallocated to `capacity`, `past_len` positions already filled by
    `preload` = [(row, start, keys (heads, n, dim), values)] (copied in at the first update)."""

    def __init__(self, capacity: int, past_len: int, preload: list[tuple[int, int, Any, Any]]) -> None:
        super().__init__()
        self.capacity = capacity
        self.length = past_len
        self.preload = preload

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        b, h, _, dk = key_states.shape
        self.dtype, self.device = key_states.dtype, key_states.device
        self.keys = key_states.new_zeros((b, h, self.capacity, dk))
        self.values = value_states.new_zeros((b, h, self.capacity, value_states.shape[-1]))
        for row, start, k, v in self.preload:
            self.keys[row, :, start : start + k.shape[1]] = k
            self.values[row, :, start : start + v.shape[1]] = v
        self.preload = []
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[-2]
        end = self.length + n
        if end > self.capacity:
            raise RuntimeError(f"KV buffer of {self.capacity} positions overflows ({end})")
        self.keys[:, :, self.length : end] = key_states
        self.values[:, :, self.length : end] = value_states
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]

    def get_seq_length(self) -> int:
        return self.length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_max_length(self) -> int:
        return self.capacity

    def select(self, rows: torch.Tensor) -> None:
        """Keep the batch rows `rows` (in that order; a row may repeat)."""
        self.keys = self.keys.index_select(0, rows)
        self.values = self.values.index_select(0, rows)

    def row(self, i: int, columns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Row i's K/V at `columns` (a copy): (heads, len(columns), dim) each."""
        return self.keys[i][:, columns], self.values[i][:, columns]


def buffer_cache(n_layers: int, capacity: int, past_len: int, preload: list[list[tuple]]) -> Cache:
    """A transformers `Cache` of `n_layers` `BufferLayer`s; `preload[layer]` as in `BufferLayer`."""
    return Cache(layers=[BufferLayer(capacity, past_len, preload[li]) for li in range(n_layers)])


@dataclass
class KVEntry:
    ids: list[int]  # the tokens whose K/V are held, from the first prompt token on
    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer, (heads, len(ids), dim) each
    next_pos: int  # mRoPE position of the token after `ids` (all three rows: the last token is text)
    n_images: int  # images whose pad runs lie in `ids`
    nbytes: int


class KVStore:
    """Per-trajectory K/V, LRU with a byte bound (see the module docstring)."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"KV store bound must be >= 0 bytes, got {max_bytes}")
        self.max_bytes = max_bytes
        self.entries: OrderedDict[str, KVEntry] = OrderedDict()
        self.bytes = 0
        self.stats = {"hits": 0, "misses": 0, "prefill_tokens_saved": 0, "evicted": 0, "invalidated": 0}

    def __len__(self) -> int:
        return len(self.entries)

    def drop(self, key: str) -> None:
        e = self.entries.pop(key, None)
        if e is not None:
            self.bytes -= e.nbytes

    def clear(self, *, invalidated: bool = True) -> None:
        """Drop every entry (counted as invalidated unless `invalidated=False`: released, not stale)."""
        self.stats["invalidated"] += len(self.entries) if invalidated else 0
        self.entries.clear()
        self.bytes = 0

    def lookup(self, key: str, prompt_ids: list[int], turn_index: int) -> KVEntry | None:
        """The entry to continue from, or None (a miss). A turn-0 request drops the key's entry (a new
        trajectory under an old key); an entry whose ids are not a proper prefix of `prompt_ids` is dropped."""
        e = self.entries.get(key) if key else None
        if turn_index == 0 or e is None:
            self.drop(key)
            self.stats["misses"] += 1
            return None
        n = len(e.ids)
        if n >= len(prompt_ids) or prompt_ids[:n] != e.ids:
            self.drop(key)
            self.stats["misses"] += 1
            return None
        self.entries.move_to_end(key)
        self.stats["hits"] += 1
        self.stats["prefill_tokens_saved"] += n
        return e

    def put(self, key: str, entry: KVEntry) -> None:
        self.drop(key)
        if not key or entry.nbytes > self.max_bytes:
            return
        self.entries[key] = entry
        self.bytes += entry.nbytes
        while self.bytes > self.max_bytes:
            _, old = self.entries.popitem(last=False)
            self.bytes -= old.nbytes
            self.stats["evicted"] += 1


def _same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and bool(torch.equal(a, b))


def dedupe_rows(rows: list[dict[str, Any]]) -> tuple[list[int], list[int]]:
    """(indices of the rows to prefill, for each row the position of its prefilled twin in that list). Rows
    without cached K/V whose new ids, pixel values and grids are equal (a GRPO group's first turn) share one."""
    uniq: list[int] = []
    idx: list[int] = []
    seen: dict[tuple[int, ...], list[int]] = {}
    for i, x in enumerate(rows):
        twin = None
        if x["entry"] is None:
            key = tuple(x["new"])
            twin = next(
                (
                    j
                    for j in seen.get(key, [])
                    if _same(x["pv"], rows[j]["pv"]) and _same(x["grid"], rows[j]["grid"])
                ),
                None,
            )
            if twin is None:
                seen.setdefault(key, []).append(i)
        if twin is None:
            idx.append(len(uniq))
            uniq.append(i)
        else:
            idx.append(idx[twin])
    return uniq, idx
