"""Evaluation policies: the agent itself and the paper's two baselines, as settings of the same agent loop.

- `agent`: the model decides (the caller's protocol limits, prompt set and tools).
- `direct`: no tools. Prompt set `baseline_direct` asks for a direct answer; protocol `max_turns=1`, no searches,
  so a search attempt ends the trajectory ("tool_limit") with no answer.
- `rag` (the paper's "RAG workflow": always two searches): prompt set `baseline_rag`; protocol = the paper's
  (3 turns, 1 image + 1 text search). `RagEngine` wraps the model's engine:
  turn 1 is forced whole (`<reason>..</reason><search><img></search>`, no model call); in turn 2 the tags
  around the query are forced (`<reason>..</reason><text_search>` before, `</text_search>` after) and the model
  writes the query itself (at most `query_tokens` tokens, cut at its first `</text_search>` like a stop
  string); in turn 3 the model answers freely. Forced tokens are marked not sampled (loss mask 0).
  If the model writes an empty query, the loop refuses the search (counted as a malformed turn) and asks for
  the answer; so a RAG trajectory searches by image always and by text whenever the model gives a query.

The prompt files are `prompts/rollout_baseline_{direct,rag}_*.j2` (the rollout's prompt-set naming, so
`mmsearch-r1 infer --prompt-set baseline_direct` works too).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mmsearch_r1.config import ProtocolConfig
from mmsearch_r1.rollout.engine import Engine, GenerationOutput, GenerationRequest, SamplingParams

POLICIES = ("agent", "direct", "rag")

IMAGE_TURN = "<reason>I will search the web with the image first.</reason><search><img></search>"
QUERY_PREFIX = "<reason>I will search the web for the facts the question needs.</reason><text_search>"
QUERY_SUFFIX = "</text_search>"


@dataclass
class Policy:
    """What one policy changes in the agent loop."""

    name: str
    protocol: ProtocolConfig
    prompt_set: str
    tools: Mapping[str, Any]
    engine: Engine
    min_turn_tokens: int = 0  # the per-turn token limit must be at least this (room for forced turns)


class RagEngine:
    """Wraps an engine with the RAG workflow's forced turns (see the module docstring)."""

    def __init__(
        self,
        inner: Engine,
        encode: Callable[[str], list[int]],
        decode: Callable[[Sequence[int]], str],
        stop_id: int,
        *,
        query_tokens: int = 32,
        answer_tokens: int | None = None,
    ) -> None:
        if query_tokens < 1:
            raise ValueError(f"query_tokens must be >= 1, got {query_tokens}")
        self.inner = inner
        self.encode = encode
        self.decode = decode
        self.stop_id = stop_id
        self.query_tokens = query_tokens
        self.image_turn = list(encode(IMAGE_TURN)) + [stop_id]
        self.prefix = list(encode(QUERY_PREFIX))
        self.suffix = list(encode(QUERY_SUFFIX))
        self.answer_tokens = answer_tokens

    @property
    def min_turn_tokens(self) -> int:
        """The per-turn token limit the forced turns need."""
        return max(len(self.image_turn), len(self.prefix) + self.query_tokens + len(self.suffix) + 1)

    def generate(
        self, requests: Sequence[GenerationRequest], params: SamplingParams
    ) -> list[GenerationOutput]:
        outs: list[GenerationOutput | None] = [None] * len(requests)
        inner_idx: list[int] = []
        inner_reqs: list[GenerationRequest] = []
        for i, req in enumerate(requests):
            if req.turn_index == 0:
                outs[i] = _forced(self.image_turn, req.max_new_tokens)
                continue
            if req.turn_index == 1:
                room = req.max_new_tokens - len(self.prefix) - len(self.suffix) - 1
                if room < 1:
                    raise ValueError(
                        f"max_new_tokens={req.max_new_tokens} leaves no room for the query of {req.key!r}"
                    )
                req = GenerationRequest(
                    prompt_ids=list(req.prompt_ids) + self.prefix,
                    max_new_tokens=min(room, self.query_tokens),
                    images=req.images,
                    pixel_values=req.pixel_values,
                    image_grid_thw=req.image_grid_thw,
                    key=req.key,
                    turn_index=req.turn_index,
                )
            elif self.answer_tokens is not None and req.max_new_tokens > self.answer_tokens:
                req = dataclasses.replace(req, max_new_tokens=self.answer_tokens)
            inner_idx.append(i)
            inner_reqs.append(req)
        inner_outs = self.inner.generate(inner_reqs, params) if inner_reqs else []
        for i, req, out in zip(inner_idx, inner_reqs, inner_outs, strict=True):
            outs[i] = self._query_turn(out) if req.turn_index == 1 else out
        return [o for o in outs if o is not None]

    def _query_turn(self, out: GenerationOutput) -> GenerationOutput:
        """Forced prefix + the model's query (cut at `</text_search>`) + forced closing tag if missing + stop."""
        ids = list(out.token_ids)
        lps = list(out.logprobs)
        flags = out.sampled_flags()
        if ids and ids[-1] == self.stop_id:  # the model ended the turn: the closing tag may still be missing
            ids, lps, flags = ids[:-1], lps[:-1], flags[:-1]
        cut = next((k for k in range(1, len(ids) + 1) if QUERY_SUFFIX in self.decode(ids[:k])), None)
        if cut is not None:
            ids, lps, flags = ids[:cut], lps[:cut], flags[:cut]
            tail = [self.stop_id]
        else:
            tail = self.suffix + [self.stop_id]
        n_pre = len(self.prefix)
        return GenerationOutput(
            token_ids=self.prefix + ids + tail,
            logprobs=[0.0] * n_pre + lps + [0.0] * len(tail),
            finish_reason="stop",
            sampled=[False] * n_pre + flags + [False] * len(tail),
        )


def _forced(ids: list[int], max_new_tokens: int) -> GenerationOutput:
    if len(ids) > max_new_tokens:
        raise ValueError(f"the forced RAG turn needs {len(ids)} tokens, max_new_tokens={max_new_tokens}")
    return GenerationOutput(list(ids), [0.0] * len(ids), "stop", [False] * len(ids))


def build_policy(
    name: str,
    *,
    engine: Engine,
    renderer: Any,
    tools: Mapping[str, Any],
    protocol: ProtocolConfig | None = None,
    prompt_set: str = "default",
    query_tokens: int = 32,
    answer_tokens: int | None = None,
) -> Policy:
    """The `Policy` named `name` (agent | direct | rag) around `engine` (see the module docstring).

    rag: `query_tokens` caps the model's query; `answer_tokens` (the caller's per-turn limit) caps its free
    turns, while `Policy.min_turn_tokens` tells the caller how high the loop's per-turn limit must be set for
    the forced turns to fit.
    """
    if name == "agent":
        return Policy(name, protocol or ProtocolConfig(), prompt_set, dict(tools), engine)
    if name == "direct":
        none = ProtocolConfig(max_turns=1, max_searches=0, max_image_searches=0, max_text_searches=0)
        return Policy(name, none, "baseline_direct", {}, engine)
    if name == "rag":
        missing = [t for t in ("image_search", "text_search") if t not in tools]
        if missing:
            raise ValueError(f"the rag policy needs both search tools; missing: {', '.join(missing)}")
        from mmsearch_r1.rollout.rendering import RendererAdapter

        r = RendererAdapter(renderer)
        wrapped = RagEngine(
            engine, r.encode, r.decode, r.im_end, query_tokens=query_tokens, answer_tokens=answer_tokens
        )
        paper = ProtocolConfig(
            max_turns=3,
            max_searches=2,
            max_image_searches=1,
            max_text_searches=1,
            image_search_first_turn_only=True,
        )
        return Policy(name, paper, "baseline_rag", dict(tools), wrapped, wrapped.min_turn_tokens)
    raise ValueError(f"unknown policy {name!r}; known: {', '.join(POLICIES)}")
