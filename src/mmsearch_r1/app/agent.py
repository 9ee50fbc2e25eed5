"""One question through the real agent loop, reported turn by turn (the app's Ask tab).

    agent = Agent(AgentSetup(model_dir, config=load_config("runs/demo/grpo/config.yaml")))
    for view in agent.ask(image, "What is the name of this statue?", gold=["Dobel Tarn"]):
        ...  # a `view.TrajView`: after each assistant turn, after each tool result, then the finished one

`ask` runs `rollout.run_rollouts` (the loop training and evaluation use) in a worker thread with the engine and
the tools wrapped so that each generated turn and each tool result is reported as it happens; the last view
is built from the finished `Trajectory` (`view.view_from_trajectory`), with, when gold answers are given, the
reward of `reward.compute_reward` under the config's reward and protocol sections. Sampling: greedy when
`temperature` is 0, else that temperature; `max_turns` replaces `protocol.max_turns`.

The model, processor and tools load once, on the first question (or `load()`), and one question runs at a
time (a lock): the CPU engine has no batching across requests to gain from concurrency.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmsearch_r1.app.view import TrajView, live_tool, live_turn, view_from_trajectory
from mmsearch_r1.config import Config

log = logging.getLogger(__name__)

MAX_QUESTION_CHARS = 2000
_DONE = object()


@dataclass
class AgentSetup:
    """What the Ask tab runs: a model directory and a config (search, protocol, rollout, reward sections)."""

    model_dir: Path
    config: Config = field(default_factory=Config)
    tools: bool = True  # False: no search tools (a search gets a tool-error observation)
    dtype: str = "float32"
    device: str = "cpu"
    engine: Any = None  # an engine to use instead of the model's HF engine (tests: a scripted policy)


class Agent:
    def __init__(self, setup: AgentSetup) -> None:
        self.setup = setup
        self._lock = threading.Lock()
        self._loaded: tuple[Any, Any, dict[str, Any]] | None = None

    def load(self) -> None:
        """Load the model, processor and tools (idempotent)."""
        if self._loaded is not None:
            return
        from mmsearch_r1.model import load_model, load_processor

        s = self.setup
        if not Path(s.model_dir).is_dir():
            raise FileNotFoundError(f"model directory not found: {s.model_dir}")
        tools: dict[str, Any] = {}
        if s.tools:
            from mmsearch_r1.tools import build_tools

            tools = dict(build_tools(s.config.search))
        renderer = load_processor(str(s.model_dir))
        model = load_model(str(s.model_dir), dtype=s.dtype, device=s.device)
        self._loaded = (model, renderer, tools)
        log.info("app agent: loaded %s with tools %s", s.model_dir, sorted(tools))

    def ask(
        self,
        image: Any,
        question: str,
        *,
        gold: list[str] | None = None,
        temperature: float = 0.0,
        max_turns: int | None = None,
        seed: int = 0,
    ) -> Iterator[TrajView]:
        """Views of the rollout as it grows; the last one is the finished trajectory. See the module docstring.

        `image` is an `ImageData` or a PIL image. Bad arguments raise ValueError naming the argument.
        """
        from mmsearch_r1.types import Answers, ImageData, Sample

        question = (question or "").strip()
        if not question:
            raise ValueError("question: empty; type a question about the image")
        if len(question) > MAX_QUESTION_CHARS:
            raise ValueError(f"question: longer than {MAX_QUESTION_CHARS} characters")
        if image is None:
            raise ValueError("image: none given; upload an image or pick an example")
        if temperature < 0:
            raise ValueError(f"temperature: must be >= 0, got {temperature}")
        cfg = self.setup.config
        protocol = cfg.protocol
        if max_turns is not None:
            if max_turns < 1:
                raise ValueError(f"max_turns: must be >= 1, got {max_turns}")
            protocol = dataclasses.replace(protocol, max_turns=int(max_turns))
        if not isinstance(image, ImageData):
            image = ImageData(_png_bytes(image))
        image.load()  # ValueError naming the problem if it is not an image
        golds = [g.strip() for g in (gold or []) if g and g.strip()]
        sample = Sample(
            "app",
            question,
            [image],
            Answers(golds[0] if golds else "", golds[1:]),
            data_source="app",
        )
        with self._lock:
            self.load()
            yield from self._run(sample, golds, protocol, temperature, seed)

    def _run(self, sample: Any, golds: list[str], protocol: Any, temperature: float, seed: int):
        from mmsearch_r1.reward import compute_reward
        from mmsearch_r1.rollout.engine import SamplingParams
        from mmsearch_r1.rollout.hf_engine import HFEngine
        from mmsearch_r1.rollout.loop import run_rollouts
        from mmsearch_r1.rollout.rendering import RendererAdapter

        model, renderer, tools = self._loaded  # type: ignore[misc]
        cfg = self.setup.config
        events: queue.Queue = queue.Queue()
        adapter = RendererAdapter(renderer)
        base = self.setup.engine if self.setup.engine is not None else HFEngine(model, renderer)
        engine = _ReportingEngine(base, adapter, events)
        wrapped = {name: _ReportingTool(name, tool, events) for name, tool in tools.items()}
        rollout = dataclasses.replace(cfg.rollout, n=1)
        params = SamplingParams(
            temperature=temperature if temperature > 0 else 1.0,
            top_p=cfg.rollout.top_p if temperature > 0 else 1.0,
            greedy=temperature == 0,
            seed=seed,
        )
        result: dict[str, Any] = {}

        def work() -> None:
            try:
                import torch

                torch.manual_seed(seed)
                (result["traj"],) = run_rollouts(
                    [sample],
                    engine=engine,
                    renderer=renderer,
                    tools=wrapped,
                    protocol=protocol,
                    rollout=rollout,
                    params=params,
                    n=1,
                )
            except Exception as e:  # reported on the page by the caller
                log.exception("app agent: rollout failed")
                result["error"] = e
            finally:
                events.put(_DONE)

        live = TrajView(question=sample.question, question_image=sample.images[0].load(), gold=golds)
        threading.Thread(target=work, name="app-rollout", daemon=True).start()
        while True:
            ev = events.get()
            if ev is _DONE:
                break
            if ev[0] == "turn":
                live_turn(live, ev[1])
            else:
                live_tool(live, *ev[1:])
            yield live
        if "error" in result:
            raise RuntimeError(f"the rollout failed: {result['error']}") from result["error"]
        traj = result["traj"]
        reward = correct = None
        if golds:
            out = compute_reward(traj.assistant_texts, sample.answers, cfg.reward, protocol)
            reward = out.to_dict()
            correct = out.components.get("acc", 0.0) > 0
        yield view_from_trajectory(traj, gold=golds, reward=reward, correct=correct)


class _ReportingEngine:
    """An engine that reports each generated turn's text, then returns the outputs unchanged."""

    def __init__(self, engine: Any, adapter: Any, events: queue.Queue) -> None:
        self.engine = engine
        self.adapter = adapter
        self.events = events

    def generate(self, requests: Any, params: Any) -> Any:
        outs = self.engine.generate(requests, params)
        for out in outs:
            ids = list(out.token_ids)
            if ids and ids[-1] == self.adapter.im_end:
                ids = ids[:-1]
            self.events.put(("turn", self.adapter.decode(ids)))
        return outs

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)


class _ReportingTool:
    """A tool that reports its result (images included) before handing it to the loop."""

    def __init__(self, name: str, tool: Any, events: queue.Queue) -> None:
        self.name = name
        self.tool = tool
        self.events = events

    def __call__(self, arg: Any, sample: Any) -> Any:
        res = self.tool(arg, sample)
        self.events.put(("tool", self.name, arg, res))
        return res


def _png_bytes(img: Any) -> bytes:
    import io

    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()
