"""The agent loop: n rollouts per sample, in token space, with tool calls overlapped with generation.

`run_rollouts(samples, engine=..., renderer=..., tools=..., protocol=..., rollout=...)` returns one
`Trajectory` per (sample, group index), in that order. Each trajectory goes:

1. Render the first user turn (`PromptSet.first_turn`) with `add_generation_prompt`; longer than
   `max_prompt_tokens`, more images than `max_images` or unrenderable -> finish "error", no turns.
2. Generate one assistant turn with `max_new_tokens = min(max_new_tokens_per_turn, budget_left - 1)` (one token
   is kept for a forced `<|im_end|>`). The engine's ids are appended as they are (mask 1 where sampled, with their
   log-probs); a turn cut at its limit gets a forced `<|im_end|>` (mask 0). The turn is decoded only to be read
   (`parse_turn`) and recorded; its ids are never re-encoded.
3. `turns.next_step` (the one home of the turn rules, per `protocol.profile`) decides. An answer ends it
   ("answer"). A search is submitted to a thread pool (`tool(arg, sample)`); its result becomes a tool turn. A
   refused action gets a refusal turn saying why; "finish" ends it with the outcome's reason ("tool_limit",
   "max_turns", or "no_action" under the original profile).
4. A tool turn (`renderer.render_tool_turn(parts)`, mask 0) is appended only whole. Thumbnails beyond
   `max_images` are replaced by a text note. If the turn does not fit the response budget with room for
   `min_turn_tokens` more, it is retried without thumbnails; if it still does not fit, the trajectory ends at the
   previous turn boundary with "max_tokens". A turn cut by the budget itself also ends with "max_tokens".

Schedules: "async" (default) keeps a queue of trajectories ready to generate; each step generates one batch of
up to `max_batch_size` ready trajectories while the tool calls of the others run in the pool, and a trajectory
whose tool result has arrived joins the next batch, so generation never waits for the slowest tool of a round.
Results that arrive in a burst are coalesced: before a batch, the loop keeps taking results that arrive within
`coalesce_s` (default 10 ms) of each other, at most 4 * `coalesce_s`; this avoids a string of tiny batches when
many tools finish together and costs at most 40 ms when they do not.
With an engine that takes requests one at a time (`submit`, the vLLM engine), "async" submits each
trajectory's next turn the moment it is ready (a tool result re-enters generation at once) and the engine
batches continuously: `max_batch_size` is then its limit on sequences in flight (vLLM's `max_num_seqs`) and
`coalesce_s` does not apply.
"round_sync" (for comparison, and bit-for-bit reproducible batches) generates every active trajectory, then
runs all their tool calls and waits for all of them, round after round.

Timing per trajectory goes to `Trajectory.stats`: `gen_s` (wall time of the generate calls it was part of),
`tool_s` (its tool calls' own latency), `wall_s`, `n_gen_calls`.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from mmsearch_r1 import turns
from mmsearch_r1.config import ProtocolConfig, RolloutConfig
from mmsearch_r1.rollout.engine import Engine, GenerationOutput, GenerationRequest, SamplingParams
from mmsearch_r1.rollout.prompts import PromptSet, get_prompt_set
from mmsearch_r1.rollout.rendering import RendererAdapter
from mmsearch_r1.rollout.trajectory import ToolCallRecord, Trajectory, TurnRecord
from mmsearch_r1.types import Part, Sample, ToolResult

log = logging.getLogger(__name__)

IMAGE_DROPPED_NOTE = "[image not shown: the image limit of this conversation is reached]"


def _failed(name: str) -> str:
    """What the model is told when the loop itself could not run a tool (as the tools word their failures)."""
    return f"The {name.replace('_', ' ')} failed and returned no results. Go on with your own knowledge.\n"


def sampling_params(cfg: RolloutConfig, *, greedy: bool = False, seed: int | None = None) -> SamplingParams:
    """The `SamplingParams` of a rollout config (greedy for evaluation)."""
    return SamplingParams(cfg.temperature, cfg.top_p, cfg.top_k, greedy=greedy, seed=seed)


@dataclass
class _Run:
    traj: Trajectory
    sample: Sample
    key: str
    pixel_chunks: list[Any] = field(default_factory=list)
    grid_chunks: list[Any] = field(default_factory=list)
    state: turns.TurnState = field(default_factory=turns.TurnState)
    t0: float = 0.0


class AgentLoop:
    """Holds what every trajectory of a run shares; `run(samples, n)` does the rollouts (see module docstring)."""

    def __init__(
        self,
        *,
        engine: Engine,
        renderer: Any,
        tools: Mapping[str, Any],
        protocol: ProtocolConfig,
        rollout: RolloutConfig,
        params: SamplingParams | None = None,
    ) -> None:
        self.engine = engine
        self.r = RendererAdapter(renderer)
        self.tools = dict(tools)
        self.protocol = protocol
        self.cfg = rollout
        self.params = params if params is not None else sampling_params(rollout)
        self.prompts: PromptSet = get_prompt_set(rollout.prompt_set)
        if rollout.schedule not in ("async", "round_sync"):
            raise ValueError(f"rollout.schedule must be 'async' or 'round_sync', got {rollout.schedule!r}")

    # ================================================================== schedules
    def run(self, samples: Sequence[Sample], n: int | None = None) -> list[Trajectory]:
        n = self.cfg.n if n is None else n
        if n < 1:
            raise ValueError(f"n (rollouts per sample) must be >= 1, got {n}")
        first_turns: dict[int, tuple[Sample, Any]] = {}  # id(sample) -> (sample, its rendered first turn)
        runs = [self._start(s, g, first_turns) for s in samples for g in range(n)]
        active = [r for r in runs if r.traj.finish_reason is None]
        with ThreadPoolExecutor(max_workers=max(1, self.cfg.tool_workers), thread_name_prefix="tool") as pool:
            if self.cfg.schedule == "async" and callable(getattr(self.engine, "submit", None)):
                self._run_streaming(active, pool)
            elif self.cfg.schedule == "async":
                self._run_async(active, pool)
            else:
                self._run_round_sync(active, pool)
        return [r.traj for r in runs]

    def _run_async(self, active: list[_Run], pool: ThreadPoolExecutor) -> None:
        ready: deque[_Run] = deque(active)
        pending: dict[Future, tuple[_Run, str, str | None]] = {}
        while ready or pending:
            for fut in [f for f in pending if f.done()]:
                run, name, arg = pending.pop(fut)
                if self._on_tool_result(run, name, arg, fut.result()):
                    ready.append(run)
            if not ready:
                wait(list(pending), return_when=FIRST_COMPLETED)
                continue
            if pending and len(ready) < self.cfg.max_batch_size and self.cfg.coalesce_s > 0:
                self._coalesce(ready, pending)
            batch = [ready.popleft() for _ in range(min(len(ready), self.cfg.max_batch_size))]
            for run, nxt in zip(batch, self._generate(batch), strict=True):
                if nxt == "ready":
                    ready.append(run)
                elif nxt is not None:
                    pending[pool.submit(self._call_tool, nxt[0], nxt[1], run.sample)] = (run, *nxt)

    def _run_streaming(self, active: list[_Run], pool: ThreadPoolExecutor) -> None:
        """Async schedule on an engine with `submit(request, params) -> Future` (the vLLM engine): every
        trajectory's next turn is submitted the moment it is ready, and the engine batches continuously."""
        gen: dict[Future, tuple[_Run, GenerationRequest, float]] = {}
        tools: dict[Future, tuple[_Run, str, str | None]] = {}

        def submit(run: _Run) -> None:
            req = self._request(run)
            gen[self.engine.submit(req, self.params)] = (run, req, time.perf_counter())  # type: ignore[attr-defined]

        for run in active:
            submit(run)
        while gen or tools:
            done, _ = wait([*gen, *tools], return_when=FIRST_COMPLETED)
            for fut in done:
                if fut in tools:
                    run, name, arg = tools.pop(fut)
                    if self._on_tool_result(run, name, arg, fut.result()):
                        submit(run)
                    continue
                run, req, t = gen.pop(fut)
                run.traj.stats["gen_s"] += time.perf_counter() - t
                run.traj.stats["n_gen_calls"] += 1
                nxt = self._on_turn(run, req, fut.result())
                if nxt == "ready":
                    submit(run)
                elif nxt is not None:
                    tools[pool.submit(self._call_tool, nxt[0], nxt[1], run.sample)] = (run, *nxt)

    def _coalesce(self, ready: deque[_Run], pending: dict[Future, tuple[_Run, str, str | None]]) -> None:
        """Let tool results that arrive in a burst join this batch: keep absorbing while results keep coming
        within `coalesce_s` of each other (at most 4 * coalesce_s in all). Never waits for a slow tool."""
        deadline = time.perf_counter() + 4 * self.cfg.coalesce_s
        while pending and len(ready) < self.cfg.max_batch_size:
            left = min(self.cfg.coalesce_s, deadline - time.perf_counter())
            if left <= 0:
                return
            done, _ = wait(list(pending), timeout=left, return_when=FIRST_COMPLETED)
            if not done:
                return
            for fut in done:
                run, name, arg = pending.pop(fut)
                if self._on_tool_result(run, name, arg, fut.result()):
                    ready.append(run)

    def _run_round_sync(self, active: list[_Run], pool: ThreadPoolExecutor) -> None:
        while active:
            calls: list[tuple[_Run, Any]] = []
            following: list[_Run] = []
            for i in range(0, len(active), self.cfg.max_batch_size):
                batch = active[i : i + self.cfg.max_batch_size]
                for run, nxt in zip(batch, self._generate(batch), strict=True):
                    if nxt == "ready":
                        following.append(run)
                    elif nxt is not None:
                        calls.append((run, nxt))
            futures = [pool.submit(self._call_tool, name, arg, run.sample) for run, (name, arg) in calls]
            wait(futures)
            for (run, (name, arg)), fut in zip(calls, futures, strict=True):
                if self._on_tool_result(run, name, arg, fut.result()):
                    following.append(run)
            active = following

    # ================================================================== one trajectory
    def _render_first(self, sample: Sample, first_turns: dict[int, tuple[Sample, Any]] | None) -> Any:
        """The sample's first turn rendered (ids, images, pixel values): once per sample and `run`, shared by its
        n rollouts (they start from the same tokens and pixels; nothing downstream changes them in place)."""
        kept = first_turns.get(id(sample)) if first_turns is not None else None
        if kept is not None and kept[0] is sample:
            return kept[1]
        system = self.r.template_system_prompt() if self.prompts.layout.system == "template_default" else None
        rendered = self.r.render_first_turn(self.prompts.first_messages(sample, self.protocol, system))
        if first_turns is not None:
            first_turns[id(sample)] = (sample, rendered)
        return rendered

    def _start(
        self, sample: Sample, group: int, first_turns: dict[int, tuple[Sample, Any]] | None = None
    ) -> _Run:
        traj = Trajectory(sample_id=sample.id, group_index=group, prompt_ids=[], question=sample.question)
        run = _Run(traj, sample, key=f"{sample.id}#{group}", t0=time.perf_counter())
        traj.stats.update(gen_s=0.0, tool_s=0.0, n_gen_calls=0.0)
        try:
            rendered = self._render_first(sample, first_turns)
        except (ValueError, OSError, TypeError) as e:
            return self._fail(run, f"sample {sample.id!r}: cannot render the first turn: {e}")
        if len(rendered.input_ids) > self.cfg.max_prompt_tokens:
            return self._fail(
                run,
                f"sample {sample.id!r}: prompt has {len(rendered.input_ids)} tokens, "
                f"more than max_prompt_tokens={self.cfg.max_prompt_tokens}",
            )
        if len(rendered.images) > self.cfg.max_images:
            return self._fail(run, f"sample {sample.id!r}: {len(rendered.images)} images > max_images")
        traj.prompt_ids = list(rendered.input_ids)
        self._add_images(run, rendered, "question")
        return run

    def _fail(self, run: _Run, message: str) -> _Run:
        log.warning("%s", message)
        run.traj.error = message
        self._finish(run, "error")
        return run

    def _finish(self, run: _Run, reason: str) -> None:
        run.traj.finish_reason = reason
        run.traj.stats["wall_s"] = time.perf_counter() - run.t0
        run.traj.stats["n_turns"] = float(len(run.traj.turns))

    def _add_images(self, run: _Run, rendered: Any, source: str) -> None:
        if not rendered.images:
            return
        run.traj.images.extend(rendered.images)
        run.traj.image_grid_thw.extend(self.r.grids(rendered))
        run.traj.image_sources.extend([source] * len(rendered.images))
        run.pixel_chunks.append(rendered.pixel_values)
        run.grid_chunks.append(rendered.image_grid_thw)

    def _budget_left(self, run: _Run) -> int:
        return self.cfg.max_response_tokens - len(run.traj.response_ids)

    def _request(self, run: _Run) -> GenerationRequest:
        return GenerationRequest(
            prompt_ids=run.traj.input_ids,
            max_new_tokens=min(self.cfg.max_new_tokens_per_turn, self._budget_left(run) - 1),
            images=list(run.traj.images),
            pixel_values=list(run.pixel_chunks),
            image_grid_thw=list(run.grid_chunks),
            key=run.key,
            turn_index=run.state.turn_index,
        )

    def _generate(self, batch: list[_Run]) -> list[Any]:
        """Generate one turn for each run; returns per run: "ready", (tool name, arg) or None (finished)."""
        requests = [self._request(run) for run in batch]
        t = time.perf_counter()
        outs = self.engine.generate(requests, self.params)
        dt = time.perf_counter() - t
        if len(outs) != len(batch):
            raise RuntimeError(f"engine returned {len(outs)} outputs for {len(batch)} requests")
        result = []
        for run, req, out in zip(batch, requests, outs, strict=True):
            run.traj.stats["gen_s"] += dt
            run.traj.stats["n_gen_calls"] += 1
            result.append(self._on_turn(run, req, out))
        return result

    def _on_turn(self, run: _Run, req: GenerationRequest, out: GenerationOutput) -> Any:
        traj = run.traj
        ids = list(out.token_ids)
        if len(ids) > req.max_new_tokens:
            raise RuntimeError(f"engine returned {len(ids)} tokens for max_new_tokens={req.max_new_tokens}")
        flags = out.sampled_flags()
        mask = [1 if f else 0 for f in flags]
        lps = [float(lp) if f else 0.0 for lp, f in zip(out.logprobs, flags, strict=True)]
        if out.finish_reason == "length" or not ids or ids[-1] != self.r.im_end:
            ids.append(self.r.im_end)  # close the turn: forced, not sampled
            mask.append(0)
            lps.append(0.0)
        start = len(traj.response_ids)
        traj.response_ids += ids
        traj.loss_mask += mask
        traj.sampled_logprobs += lps
        text = self.r.decode(ids[:-1])
        action = turns.parse(text, self.protocol)
        turn = TurnRecord(
            index=run.state.turn_index,
            start=start,
            end=len(traj.response_ids),
            text=text,
            action=action,
            finish=out.finish_reason,
            n_sampled=sum(mask),
        )
        traj.turns.append(turn)
        outcome = turns.next_step(run.state, action, self.protocol)
        run.state = run.state.after(action, outcome)
        turn.refusal = outcome.reason
        if outcome.kind == "answer":
            self._finish(run, "answer")
            return None
        if out.finish_reason == "length" and req.max_new_tokens < self.cfg.max_new_tokens_per_turn:
            self._finish(run, "max_tokens")  # the response budget, not the turn limit, cut this turn
            return None
        if outcome.kind == "search":
            return (action.kind, action.content if action.kind == "text_search" else None)
        if outcome.kind == "finish":
            self._finish(run, outcome.finish or "max_turns")
            return None
        parts = self.prompts.refusal(
            outcome.reason or "the action is not valid",
            question=run.sample.question,
            allowed=self._allowed(run),
            turns_left=self._turns_left(run),
        )
        return "ready" if self._append_observation(run, parts, None) else None

    def _allowed(self, run: _Run) -> list[str]:
        return turns.allowed_actions(run.state, self.protocol)

    def _turns_left(self, run: _Run) -> int:
        return self.protocol.max_turns - run.state.turn_index

    # ================================================================== tools and observations
    def _call_tool(self, name: str, arg: str | None, sample: Sample) -> tuple[ToolResult, float]:
        """Runs in a pool thread. Never raises: a missing tool or an exception becomes an error result."""
        t = time.perf_counter()
        tool = self.tools.get(name)
        try:
            if tool is None:
                result = ToolResult(
                    [f"the {name} tool is not available"], ok=False, error=f"no tool {name!r}"
                )
            else:
                result = tool(arg, sample)
        except Exception as e:  # a tool must not raise; if one does, the model is told the search failed
            log.exception("tool %s raised on sample %s", name, sample.id)
            result = ToolResult([_failed(name)], ok=False, error=f"{type(e).__name__}: {e}")
        return result, time.perf_counter() - t

    def _on_tool_result(self, run: _Run, name: str, arg: str | None, res: tuple[ToolResult, float]) -> bool:
        """Append the tool turn; True if the trajectory goes on."""
        result, latency = res
        run.traj.stats["tool_s"] += latency
        turn = run.traj.turns[-1]
        turn.tool = ToolCallRecord(
            name=name,
            arg=arg,
            ok=result.ok,
            error=result.error,
            latency_s=latency,
            text=result.text,
            n_images=len(result.images),
            stats=dict(result.stats),
        )
        parts = self.prompts.observation(
            name,
            result.parts,
            ok=result.ok,
            query=arg,
            question=run.sample.question,
            allowed=self._allowed(run),
            turns_left=self._turns_left(run),
        )
        return self._append_observation(run, parts, turn.tool)

    def _append_observation(self, run: _Run, parts: list[Part], tool: ToolCallRecord | None) -> bool:
        """Append a whole tool/refusal turn (mask 0), dropping thumbnails if needed; False = finished."""
        traj = run.traj
        room = self.cfg.max_images - len(traj.images)
        kept: list[Part] = []
        for p in parts:
            if not isinstance(p, str):
                if room <= 0:
                    p = IMAGE_DROPPED_NOTE
                room -= 1
            kept.append(p)
        newline = self.prompts.layout.tool_turn_newline
        rendered = self.r.render_tool_turn(kept, newline)
        if (
            self._budget_left(run) - len(rendered.input_ids) < self.cfg.min_turn_tokens + 1
            and rendered.images
        ):
            kept = [p if isinstance(p, str) else IMAGE_DROPPED_NOTE for p in kept]
            rendered = self.r.render_tool_turn(kept, newline)
        if self._budget_left(run) - len(rendered.input_ids) < self.cfg.min_turn_tokens + 1:
            self._finish(run, "max_tokens")
            return False
        turn = traj.turns[-1]
        turn.obs_start = len(traj.response_ids)
        traj.response_ids += list(rendered.input_ids)
        traj.loss_mask += [0] * len(rendered.input_ids)
        traj.sampled_logprobs += [0.0] * len(rendered.input_ids)
        turn.obs_end = len(traj.response_ids)
        turn.observation = "".join(p if isinstance(p, str) else "<image>" for p in kept)
        if tool is not None:
            tool.n_images_shown = len(rendered.images)
        self._add_images(run, rendered, f"turn {turn.index + 1} {tool.name if tool else 'refusal'}")
        return True


def run_rollouts(
    samples: Sequence[Sample],
    *,
    engine: Engine,
    renderer: Any,
    tools: Mapping[str, Any],
    protocol: ProtocolConfig,
    rollout: RolloutConfig,
    params: SamplingParams | None = None,
    n: int | None = None,
) -> list[Trajectory]:
    """n (default `rollout.n`) trajectories per sample, ordered (sample 0 group 0, sample 0 group 1, ...)."""
    loop = AgentLoop(
        engine=engine, renderer=renderer, tools=tools, protocol=protocol, rollout=rollout, params=params
    )
    return loop.run(samples, n)
