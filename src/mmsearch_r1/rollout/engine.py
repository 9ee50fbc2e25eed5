"""The generation-engine contract of the agent loop, and two engines that need no model.

An engine turns a batch of prompts (token ids, with the images whose pad tokens the ids already contain) into
one continuation each: `Engine.generate(requests, params) -> outputs`, one `GenerationOutput` per request, in
order. The contract every engine keeps:

- `token_ids` are exactly the tokens produced, in order, ending at (and including) the stop token
  `<|im_end|>` when `finish_reason == "stop"`; nothing after the stop token, nothing filtered or overwritten.
- `logprobs[i]` is the log-probability of `token_ids[i]` under the distribution the trainer recomputes:
  `log_softmax(logits / T)` of the raw model logits at that position, with `T = params.temperature`
  (`T = 1` for greedy). Top-k / top-p only restrict *which* token may be drawn; they do not renormalize the
  recorded log-probability, so the trainer needs no knowledge of them.
- `sampled[i]` says whether the policy chose `token_ids[i]` (True) or the token was forced by the engine
  (False; e.g. a scripted action tag). `None` means every token was sampled. The loop gives forced tokens loss
  mask 0 and log-prob 0.
- `finish_reason` is "stop" (ended with the stop token) or "length" (hit `max_new_tokens`).

`ScriptedEngine` plays scripted turns (texts or ids) for tests of the loop's branches; `ForcedActionEngine`
wraps a real engine so that a random tiny model still reaches tool turns: it forces `<reason>` and an action
tag around tokens the real model samples (see its docstring).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

FinishReason = Literal["stop", "length"]


@dataclass
class SamplingParams:
    """How to pick each token. `greedy=True` (or temperature 0) takes the arg-max; `top_k=0` / `top_p=1` are off.

    `seed`: base seed; an engine that supports it draws each request's tokens from its own random stream
    seeded by (seed, request.key, request.turn_index), so results do not depend on batch composition.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    greedy: bool = False
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")

    @property
    def is_greedy(self) -> bool:
        return self.greedy or self.temperature == 0.0

    @property
    def logprob_temperature(self) -> float:
        """The T of `log_softmax(logits / T)` for the recorded log-probs (1 for greedy)."""
        return 1.0 if self.is_greedy else float(self.temperature)


@dataclass
class GenerationRequest:
    """One prompt. `images` are PIL images in the order of their pad runs in `prompt_ids`.

    `pixel_values` / `image_grid_thw` may be given pre-encoded (as the renderer returned them) to save the engine
    the work; they must describe exactly `images`. `key` and `turn_index` identify the trajectory and turn (for
    seeded sampling and for scripted engines).
    """

    prompt_ids: list[int]
    max_new_tokens: int
    images: list[Any] = field(default_factory=list)
    pixel_values: Any = None
    image_grid_thw: Any = None
    key: str = ""
    turn_index: int = 0


@dataclass
class GenerationOutput:
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: FinishReason
    sampled: list[bool] | None = None

    def __post_init__(self) -> None:
        if len(self.logprobs) != len(self.token_ids):
            raise ValueError(f"{len(self.logprobs)} log-probs for {len(self.token_ids)} tokens")
        if self.sampled is not None and len(self.sampled) != len(self.token_ids):
            raise ValueError(f"{len(self.sampled)} sampled flags for {len(self.token_ids)} tokens")
        if self.finish_reason not in ("stop", "length"):
            raise ValueError(f"finish_reason must be 'stop' or 'length', got {self.finish_reason!r}")

    def sampled_flags(self) -> list[bool]:
        return list(self.sampled) if self.sampled is not None else [True] * len(self.token_ids)


@runtime_checkable
class Engine(Protocol):
    """Anything that generates one continuation per request (see the module docstring for the contract)."""

    def generate(
        self, requests: Sequence[GenerationRequest], params: SamplingParams
    ) -> list[GenerationOutput]: ...


# A script maps a request to the turn to emit: a text (encoded with the engine's `encode`) or token ids.
Script = Callable[[GenerationRequest], "str | list[int]"]


class ScriptedEngine:
    """Emits scripted turns instead of sampling (a mock policy for tests).

    `script(request)` returns the turn's text (without the stop token) or its ids. The engine appends the stop
    token and cuts to `request.max_new_tokens` (then `finish_reason="length"`). Tokens count as sampled (mask 1)
    with log-prob `logprob` unless `sampled=False`. `calls` records every batch (the requests it received).
    """

    def __init__(
        self,
        script: Script,
        encode: Callable[[str], list[int]],
        stop_id: int,
        *,
        logprob: float = -0.5,
        sampled: bool = True,
    ) -> None:
        self.script = script
        self.encode = encode
        self.stop_id = stop_id
        self.logprob = logprob
        self.sampled = sampled
        self.calls: list[list[GenerationRequest]] = []

    def generate(
        self, requests: Sequence[GenerationRequest], params: SamplingParams
    ) -> list[GenerationOutput]:
        self.calls.append(list(requests))
        outs = []
        for req in requests:
            turn = self.script(req)
            ids = list(self.encode(turn)) if isinstance(turn, str) else list(turn)
            ids.append(self.stop_id)
            reason: FinishReason = "stop"
            if len(ids) > req.max_new_tokens:
                ids, reason = ids[: req.max_new_tokens], "length"
            outs.append(GenerationOutput(ids, [self.logprob] * len(ids), reason, [self.sampled] * len(ids)))
        return outs


# A decision maps a request to (forced prefix text, forced suffix text), or None to sample the turn freely.
Decision = Callable[[GenerationRequest], "tuple[str, str] | None"]


class ForcedActionEngine:
    """Wraps a real engine: some turns get forced protocol tags around tokens the model really samples.

    For a request where `decide(request)` returns `(prefix, suffix)`, e.g.
    `("<reason>", "</reason><search><img></search>")`: the prefix ids are appended to the prompt, the inner
    engine samples up to `sampled_tokens` tokens after them, and the suffix ids plus the stop token are forced
    after the sampled ones. If the model itself stops (samples the stop token) the turn ends there, as sampled,
    without the suffix. The forced tokens are marked `sampled=False` (loss mask 0, log-prob 0); the model's
    tokens keep the inner engine's log-probs, which were computed with the forced prefix in context, so a
    full-sequence forward reproduces them. `decide` returning None passes the request through unchanged.
    When the inner engine takes requests one at a time (`submit`), so does the wrapper.
    `inner_outputs` records what the inner engine returned (for tests).
    """

    def __init__(
        self,
        inner: Engine,
        decide: Decision,
        encode: Callable[[str], list[int]],
        stop_id: int,
        *,
        sampled_tokens: int = 8,
    ) -> None:
        self.inner = inner
        self.decide = decide
        self.encode = encode
        self.stop_id = stop_id
        self.sampled_tokens = sampled_tokens
        self.inner_outputs: list[tuple[GenerationRequest, GenerationOutput]] = []
        if callable(getattr(inner, "submit", None)):  # streams like the inner engine (the vLLM engine)
            self.submit = self._submit

    def _plan(self, req: GenerationRequest) -> tuple[list[int], list[int], GenerationRequest]:
        """(forced prefix ids, forced suffix ids, the request for the inner engine)."""
        forced = self.decide(req)
        if forced is None:
            return [], [], req
        prefix = self.encode(forced[0]) if forced[0] else []
        suffix = (self.encode(forced[1]) if forced[1] else []) + [self.stop_id]
        room = req.max_new_tokens - len(prefix) - len(suffix)
        if room < 1:
            raise ValueError(
                f"max_new_tokens={req.max_new_tokens} leaves no room for the forced tags of turn "
                f"{req.turn_index} of {req.key!r}"
            )
        inner = GenerationRequest(
            prompt_ids=list(req.prompt_ids) + prefix,
            max_new_tokens=min(room, self.sampled_tokens),
            images=req.images,
            pixel_values=req.pixel_values,
            image_grid_thw=req.image_grid_thw,
            key=req.key,
            turn_index=req.turn_index,
        )
        return prefix, suffix, inner

    def _finish(
        self, prefix: list[int], suffix: list[int], ireq: GenerationRequest, out: GenerationOutput
    ) -> GenerationOutput:
        self.inner_outputs.append((ireq, out))
        if not prefix and not suffix:
            return out
        ids = prefix + list(out.token_ids)
        lps = [0.0] * len(prefix) + list(out.logprobs)
        flags = [False] * len(prefix) + out.sampled_flags()
        if out.finish_reason == "length":  # the model did not stop: force the action and the stop token
            ids += suffix
            lps += [0.0] * len(suffix)
            flags += [False] * len(suffix)
        return GenerationOutput(ids, lps, "stop", flags)

    def generate(
        self, requests: Sequence[GenerationRequest], params: SamplingParams
    ) -> list[GenerationOutput]:
        plans = [self._plan(r) for r in requests]
        outs = self.inner.generate([p[2] for p in plans], params)
        return [self._finish(p, s, r, o) for (p, s, r), o in zip(plans, outs, strict=True)]

    def _submit(self, req: GenerationRequest, params: SamplingParams) -> Future:
        prefix, suffix, ireq = self._plan(req)
        result: Future = Future()

        def done(f: Future) -> None:
            try:
                result.set_result(self._finish(prefix, suffix, ireq, f.result()))
            except Exception as e:  # the inner engine's error reaches the caller
                result.set_exception(e)

        self.inner.submit(ireq, params).add_done_callback(done)  # type: ignore[attr-defined]
        return result
