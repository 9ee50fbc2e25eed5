"""`run_study`: the paper's comparison and its search-penalty ablation in miniature, on the demo's world, over seeds.

Per seed, in `OUT/seed{N}/`: the demo's world, tiny model and SFT (`world.demo`: `demo_config`, `sft_config`,
the same settings), then five arms, all evaluated greedily on the test split (`eval.evaluate.evaluate`):
- `direct`: the SFT model answering without tools: the agent loop under a protocol with no searches (2 turns:
  a search it tries is refused, "Not carried out", and it must answer in the next turn);
- `rag`: the SFT model under the RAG workflow of `eval/policies.py` (`RagEngine`: a forced image search, then a
  text search whose query the model writes after a forced prefix, then the answer; the paper's protocol);
- `sft_agent`: the SFT model as an agent (it decides when to search);
- `grpo_penalty`: GRPO from the SFT model with the demo's settings and search penalty, evaluated as an agent;
- `grpo_no_penalty`: the same GRPO run (steps, seed) with `reward.search_penalty=0`.
Every arm is evaluated with the world's compact prompt set, the one the model was trained on: under the
project's generic baseline prompt sets (`baseline_direct`, `baseline_rag`), which the tiny model never saw, both
baselines collapsed (seed 0: direct 0 %, RAG 1.6 % accuracy; docs/study.md).

Resumable: each unit (world, model, sft, then the arms in order) writes `seed{N}/done/{unit}.json` (its figures
and paths) when it has finished, by a temporary name and a rename. A restarted study loads finished units and
starts at the first unfinished one, removing that unit's partial output first. `OUT/settings.json` records
what the study was started with; a restart with other settings (quick, overrides) is refused.

`OUT/study.json`: settings, per seed and arm the figures (`{head, tail, all}` -> `{acc, search_ratio, n}`) and,
for the GRPO arms, the training curves; the mean and standard deviation over seeds per arm; the claims of the
paper checked on the means (`claims`); `complete`. `OUT/report/` (`study_report.write_study_report`):
`report.md`, `acc_vs_search.png`, `grpo_curves.png`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mmsearch_r1.world.demo import demo_config, demo_model_sizes, group_figures, sft_config, write_json

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
ARMS = ("direct", "rag", "sft_agent", "grpo_penalty", "grpo_no_penalty")
GRPO_ARMS = {"grpo_penalty": None, "grpo_no_penalty": 0.0}  # None: the demo's reward.search_penalty
POLICY = {"direct": "direct", "rag": "rag", "sft_agent": "agent"}
UNITS = ("world", "model", "sft", *ARMS)
GROUPS = ("head", "tail", "all")
RAG_IMAGE_TURN = "<reason> Unknown: I will search with the image.</reason><search><img></search>"
RAG_QUERY_PREFIX = "<reason>The first result is"
# the paper's RAG workflow: 3 turns, one image search (first turn) and one text search
RAG_PROTOCOL = {
    "max_turns": 3,
    "max_searches": 2,
    "max_image_searches": 1,
    "max_text_searches": 1,
    "image_search_first_turn_only": True,
}
CURVE_KEYS = (
    "reward/mean",
    "acc/world_head",
    "acc/world_tail",
    "search/ratio_any/world_head",
    "search/ratio_any/world_tail",
)
# the thresholds for the paper's claims (docs/study.md)
HEAD_SEARCH_GAP = 0.30
TAIL_SEARCH_MIN = 0.90
RAG_ACC_MARGIN = 0.03
DIRECT_TAIL_FAIL = 0.20


def parse_seeds(text: str) -> list[int]:
    """ "0,1,2" -> [0, 1, 2]; ValueError naming the argument on anything else (empty, not integers, repeats)."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        seeds = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"--seeds: expected comma-separated integers such as 0,1,2, got {text!r}") from None
    if any(s < 0 for s in seeds):
        raise ValueError(f"--seeds: seeds must be >= 0, got {text!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds: a seed is repeated in {text!r}")
    return seeds


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def _check_settings(out: Path, settings: dict[str, Any]) -> None:
    """Write `settings.json` on a new study; on a restart refuse settings that differ (seeds may change)."""
    path = out / "settings.json"
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        for key in ("quick", "overrides"):
            if old.get(key) != settings[key]:
                raise ValueError(
                    f"{out} holds a study started with {key}={old.get(key)!r}, not {settings[key]!r}: "
                    "use another --out or the same settings"
                )
    write_json(path, settings)


def curves(metrics_path: Path) -> dict[str, list[list[float]]]:
    """{key: [[step, value], ...]} of the GRPO training metrics in `CURVE_KEYS` (steps >= 1)."""
    rows = [
        json.loads(line) for line in metrics_path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]
    out: dict[str, list[list[float]]] = {}
    for key in CURVE_KEYS:
        pts = [[r["step"], float(r[key])] for r in rows if isinstance(r.get(key), (int, float))]
        if pts:
            out[key] = pts
    return out


def aggregate(per_seed: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per arm and group: mean and standard deviation (sample, 0 for one seed) of accuracy and search ratio over
    the seeds that finished the arm, with their number."""
    agg: dict[str, Any] = {}
    for arm in ARMS:
        runs = [s["arms"][arm] for s in per_seed.values() if arm in s.get("arms", {})]
        if not runs:
            continue
        agg[arm] = {"n_seeds": len(runs)}
        for g in GROUPS:
            agg[arm][g] = {}
            for metric in ("acc", "search_ratio"):
                vals = [r[g][metric] for r in runs]
                std = statistics.stdev(vals) if len(vals) > 1 else 0.0
                agg[arm][g][metric] = {"mean": round(statistics.fmean(vals), 4), "std": round(std, 4)}
    return agg


def check_claims(agg: dict[str, Any]) -> dict[str, Any]:
    """The paper's claims on the seed means (thresholds in docs/study.md); a claim whose arms are missing is
    left out."""

    def m(arm: str, g: str, metric: str) -> float:
        return agg[arm][g][metric]["mean"]

    claims: dict[str, Any] = {}
    if {"grpo_penalty", "grpo_no_penalty"} <= set(agg):
        gap = m("grpo_no_penalty", "head", "search_ratio") - m("grpo_penalty", "head", "search_ratio")
        claims["penalty_cuts_head_search_30_points"] = {"holds": gap >= HEAD_SEARCH_GAP, "gap": round(gap, 4)}
        tails = {a: m(a, "tail", "search_ratio") for a in ("grpo_penalty", "grpo_no_penalty")}
        claims["tail_search_at_least_90pct_both_grpo"] = {
            "holds": min(tails.values()) >= TAIL_SEARCH_MIN,
            **{f"{a}_tail_search_ratio": v for a, v in tails.items()},
        }
    if {"grpo_penalty", "rag"} <= set(agg):
        d_acc = m("grpo_penalty", "all", "acc") - m("rag", "all", "acc")
        d_sr = m("grpo_penalty", "all", "search_ratio") - m("rag", "all", "search_ratio")
        claims["penalised_grpo_matches_rag_searching_less"] = {
            "holds": d_acc >= -RAG_ACC_MARGIN and d_sr < 0,
            "acc_minus_rag": round(d_acc, 4),
            "search_ratio_minus_rag": round(d_sr, 4),
        }
    if "direct" in agg:
        t = m("direct", "tail", "acc")
        claims["direct_fails_on_tail"] = {"holds": t <= DIRECT_TAIL_FAIL, "tail_acc": t}
    return claims


class _Seed:
    """One seed's units under `OUT/seed{N}` (module docstring)."""

    def __init__(self, out: Path, seed: int, quick: bool, overrides: Sequence[str], tick: Progress) -> None:
        self.root = out / f"seed{seed}"
        self.seed, self.quick, self.overrides, self.tick = seed, quick, list(overrides), tick
        self.done_dir = self.root / "done"
        self.world: Any = None
        self.cfg: Any = None

    def done(self, unit: str) -> dict[str, Any] | None:
        path = self.done_dir / f"{unit}.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def finish(self, unit: str, result: dict[str, Any]) -> dict[str, Any]:
        self.done_dir.mkdir(parents=True, exist_ok=True)
        write_json(self.done_dir / f"{unit}.json", _jsonable(result))
        return result

    def fresh(self, path: Path) -> Path:
        """Remove what an interrupted unit left at `path`."""
        if path.exists():
            log.info("study: removing the unfinished %s", path)
            shutil.rmtree(path)
        return path

    def unit_world(self) -> dict[str, Any]:
        from mmsearch_r1.world.build import build_world

        w = build_world(
            self.fresh(self.root / "world"),
            seed=self.seed,
            size="small" if self.quick else "default",
            progress=lambda s, d, t: self.tick(f"seed {self.seed} world", d, t),
        )
        return dataclasses.asdict(w)

    def unit_model(self) -> dict[str, Any]:
        from mmsearch_r1.model.tiny import build_tiny_model

        path = build_tiny_model(
            self.fresh(self.root / "model" / "base"),
            seed=self.seed,
            corpus=self.world.tokenizer_corpus,
            sizes=demo_model_sizes(),
        )
        return {"path": path}

    def unit_sft(self) -> dict[str, Any]:
        from mmsearch_r1.rl.sft import run_sft

        self.fresh(Path(self.cfg.sft.run_dir))
        sft = run_sft(sft_config(self.cfg), progress=lambda s, t, m: self.tick(f"seed {self.seed} sft", s, t))
        return {
            "final_dir": sft.final_dir,
            "steps": sft.steps,
            "final_loss": sft.final_loss,
            "conversations": sft.n_conversations,
            "metrics": sft.metrics_path,
        }

    def evaluate(self, model_dir: Path, arm: str, policy: str) -> dict[str, Any]:
        """Greedy evaluation on the test split with the world's prompts (module docstring: the baselines)."""
        from mmsearch_r1.config import ProtocolConfig
        from mmsearch_r1.data.reader import read_samples
        from mmsearch_r1.eval.evaluate import evaluate
        from mmsearch_r1.eval.policies import RagEngine
        from mmsearch_r1.model import load_model, load_processor
        from mmsearch_r1.rollout.engines import build_engine
        from mmsearch_r1.rollout.rendering import RendererAdapter
        from mmsearch_r1.tools import build_tools

        rollout, protocol = self.cfg.rollout, self.cfg.protocol
        renderer = load_processor(model_dir)
        model = load_model(model_dir, dtype="float32", device="cpu") if rollout.engine == "hf" else None
        engine: Any = build_engine(rollout, renderer, model=model, model_path=str(model_dir), dtype="float32")
        if policy == "direct":
            protocol = ProtocolConfig(max_turns=2, max_searches=0, max_image_searches=0, max_text_searches=0)
        elif policy == "rag":
            r = RendererAdapter(renderer)
            engine = RagEngine(
                engine, r.encode, r.decode, r.im_end, answer_tokens=rollout.max_new_tokens_per_turn
            )
            # the forced words in the world's SFT wording (the tiny model follows no other wording)
            engine.image_turn = list(r.encode(RAG_IMAGE_TURN)) + [r.im_end]
            engine.prefix = list(r.encode(RAG_QUERY_PREFIX))
            protocol = ProtocolConfig(**RAG_PROTOCOL)
            rollout = dataclasses.replace(
                rollout, max_new_tokens_per_turn=max(rollout.max_new_tokens_per_turn, engine.min_turn_tokens)
            )
        out_dir = self.fresh(self.root / "eval" / arm)
        summary = evaluate(
            read_samples(self.world.test).samples,
            engine=engine,
            renderer=renderer,
            tools=dict(build_tools(self.cfg.search)),
            out_dir=out_dir,
            policy="agent",
            protocol=protocol,
            rollout=rollout,
            reward=self.cfg.reward,
            chunk_size=32,
            progress=lambda d, t: self.tick(f"seed {self.seed} eval {arm}", d, t),
            info={"model": str(model_dir), "study_arm": arm, "study_policy": policy},
        )
        return {**group_figures(summary), "policy": policy, "eval": out_dir / "summary.json"}

    def unit_arm(self, arm: str, sft_final: Path) -> dict[str, Any]:
        if arm in POLICY:
            return self.evaluate(sft_final, arm, POLICY[arm])
        from mmsearch_r1.rl.trainer import train

        cfg = copy.deepcopy(self.cfg)
        cfg.model.path = str(sft_final)
        cfg.trainer.run_dir = str(self.fresh(self.root / arm))
        penalty = GRPO_ARMS[arm]
        if penalty is not None:
            cfg.reward.search_penalty = penalty
        res = train(cfg, progress=lambda s, t, m: self.tick(f"seed {self.seed} {arm}", s, t))
        figures = self.evaluate(res.final_dir, arm, "agent")
        return {
            **figures,
            "search_penalty": cfg.reward.search_penalty,
            "steps": res.steps,
            "model": res.final_dir,
            "metrics": res.metrics_path,
            "curves": curves(res.metrics_path),
        }

    def run(self) -> dict[str, Any]:
        from mmsearch_r1.world.build import World

        result: dict[str, Any] = {"arms": {}, "wall_s": {}, "resumed": []}

        def unit(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
            got = self.done(name)
            if got is not None:
                result["resumed"].append(name)
                return got
            t0 = time.perf_counter()
            value = _jsonable(fn())
            value["wall_s"] = round(time.perf_counter() - t0, 2)
            log.info("study seed %d: %s in %.1f s", self.seed, name, value["wall_s"])
            return self.finish(name, value)

        w = unit("world", self.unit_world)
        paths = {f.name for f in dataclasses.fields(World) if f.type in ("Path", Path)}
        kw = {f.name: w[f.name] for f in dataclasses.fields(World)}
        self.world = World(**{k: Path(v) if k in paths else v for k, v in kw.items()})
        model0 = Path(unit("model", self.unit_model)["path"])
        self.cfg = demo_config(
            self.root, self.world, model0, quick=self.quick, seed=self.seed, overrides=self.overrides
        )
        sft = unit("sft", self.unit_sft)
        result["sft"] = {k: sft[k] for k in ("steps", "final_loss", "conversations", "final_dir")}
        result["world"] = w["counts"]
        for name in ("world", "model", "sft"):
            result["wall_s"][name] = (self.done(name) or {}).get("wall_s")
        for arm in ARMS:
            result["arms"][arm] = unit(arm, lambda arm=arm: self.unit_arm(arm, Path(sft["final_dir"])))
            result["wall_s"][arm] = result["arms"][arm]["wall_s"]
        return result


def run_study(
    out_dir: str | Path,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    quick: bool = False,
    overrides: Sequence[str] = (),
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run (or resume) every seed's units (module docstring); write `study.json` and the report after each seed;
    return `study.json`'s content."""
    from mmsearch_r1.world.study_report import write_study_report

    if not seeds:
        raise ValueError("--seeds: at least one seed is needed")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"seeds": list(seeds), "quick": quick, "overrides": list(overrides), "arms": list(ARMS)}
    _check_settings(out, settings)

    def tick(stage: str, done: int, total: int) -> None:
        if progress is not None:
            progress(stage, done, total)

    t0 = time.perf_counter()
    per_seed: dict[str, Any] = {}
    study: dict[str, Any] = {}
    for seed in seeds:
        per_seed[str(seed)] = _Seed(out, seed, quick, overrides, tick).run()
        agg = aggregate(per_seed)
        study = {
            "settings": settings,
            "seeds": per_seed,
            "aggregate": agg,
            "claims": check_claims(agg),
            "complete": len(per_seed) == len(seeds),
            "wall_s": round(time.perf_counter() - t0, 2),
        }
        study["paths"] = {k: str(v) for k, v in write_study_report(out, study).items()}
        write_json(out / "study.json", study)
    return study
