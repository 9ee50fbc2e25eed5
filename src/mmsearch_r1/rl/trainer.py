"""The GRPO trainer loop (`mmsearch-r1 train`): rollout -> reward -> advantages -> update -> log, in `train`.

One training step (`trainer.prompts_per_step` prompts, `rollout.n` rollouts each; every rank takes its
contiguous share of the step's prompts):

1. Rollout: the agent loop (`rollout.AgentLoop`) with the engine `rollout.engine` names: HF `generate` on an
   unsharded copy of the policy in `model.compute_dtype` (the compute model itself when there is one process;
   rl/setup.py), or vLLM colocated in this process (its own weights, synced one tensor at a time after every
   update; on CUDA it sleeps, KV cache released, from the end of the rollout until the sync; no HF copy is
   built). Sampling is seeded per (trainer.seed, step, round) and, inside the
   engine, per trajectory and turn, so a step's rollouts depend only on the weights, the data position and the
   seed: this is what makes `--resume` exact.
2. Reward: `reward.compute_reward` on the assistant turns, with the training step for the search-penalty warm-up.
3. Advantages: `rl.grpo.group_advantages` over each prompt's n rollouts.
4. Dynamic sampling (`grpo.dynamic_sampling`): groups whose rewards are all equal are dropped and more prompts are
   rolled out until every rank has its share of informative groups, at most `grpo.dynamic_sampling_max_rounds`
   rounds; the step then trains on what it has (possibly fewer groups).
5. Old log-probs: recomputed by the trainer with the same forward as the update (`rl.batch.PolicyForward`, the
   sampling temperature), in a pass of their own when `old_logprob_pass_needed` (more than one PPO epoch or
   mini-batch), else taken detached from the update's own forward; the gap to the engine's recorded log-probs
   is logged as `rollout/logprob_diff_max`.
6. Reference log-probs: only when `grpo.kl_coef > 0` (the reference model is never built otherwise); it is a
   frozen copy of the starting weights in `model.compute_dtype`, FSDP-sharded like the policy (rl/setup.py).
7. Update: `trainer.prompts_per_step / trainer.mini_batch_prompts` optimizer steps per epoch (`grpo.ppo_epochs`),
   each over micro-batches of `trainer.micro_batch_size` trajectories with gradient accumulation; the loss of
   each micro-batch is normalized by the whole mini-batch's count over all ranks (`agg_normalizer`) and multiplied
   by the world size (FSDP averages gradients), so the update does not depend on the split. Gradient clipping
   (`optim.grad_clip`), AdamW, then the lr scheduler steps once per training step (as the released script did;
   `optim.sigmoid_center` counts training steps).
8. Log: metrics (rl/metrics.py; JSONL always), traces of `trainer.traces_per_step` trajectories, validation
   (greedy, one response per question, split by data source) before training and every `trainer.val_every`
   steps, checkpoints every `trainer.save_every` steps and at the end, and the final policy exported as a plain
   HF directory `RUN_DIR/final`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmsearch_r1.config import Config
from mmsearch_r1.config_io import save_config
from mmsearch_r1.rl import checkpoint as ckpt
from mmsearch_r1.rl import distributed as D
from mmsearch_r1.rl.batch import collate, index_stream, micro_batches, seed_all
from mmsearch_r1.rl.grpo import agg_normalizer, filter_groups_dynamic, group_advantages, grpo_loss
from mmsearch_r1.rl.metrics import rollout_metrics, search_counters, trajectory_row

log = logging.getLogger(__name__)

Progress = Callable[[int, int, dict[str, float]], None]
EngineHook = Callable[[Any, Any], Any]


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    final_dir: Path | None
    metrics_path: Path


def check_train_config(cfg: Config, world_size: int = 1) -> None:
    """ValueError naming each setting the trainer cannot run with."""
    t, errs = cfg.trainer, []
    if not cfg.model.path:
        errs.append("model.path is empty: give the directory of the policy model")
    if t.val_only and not cfg.data.val_files:
        errs.append("trainer.val_only needs data.val_files: give at least one parquet file")
    if not t.val_only and not cfg.data.train_files:
        errs.append("data.train_files is empty: give at least one parquet file")
    if t.prompts_per_step % world_size or t.mini_batch_prompts % world_size:
        errs.append(
            f"trainer.prompts_per_step={t.prompts_per_step} and trainer.mini_batch_prompts="
            f"{t.mini_batch_prompts} must be divisible by the number of processes ({world_size})"
        )
    errs += _missing_paths(cfg)
    if errs:
        raise ValueError("invalid training config:\n  " + "\n  ".join(errs))


def _missing_paths(cfg: Config) -> list[str]:
    """Every configured input path that does not exist (checked before the model loads or config.yaml is written)."""
    errs = []
    if cfg.model.path and not Path(cfg.model.path).is_dir():
        errs.append(f"model.path={cfg.model.path!r}: no such directory")
    for key in ("train_files", "val_files"):
        for f in getattr(cfg.data, key):
            if not Path(f).is_file():
                errs.append(f"data.{key}: no such file {f!r}")
    s = cfg.search
    specs = {"text_backend": s.text_backend, "image_backend": s.image_backend}
    for sub in ("reader", "summarizer"):
        if isinstance(s.text_backend.get(sub), dict):
            specs[f"text_backend.{sub}"] = s.text_backend[sub]
    for where, spec in specs.items():
        for key in ("index_dir", "root"):  # local indexes and replay caches
            if isinstance(spec, dict) and spec.get(key) and not Path(spec[key]).exists():
                errs.append(f"search.{where}.{key}={spec[key]!r}: no such directory")
    return errs


def old_logprob_pass_needed(cfg: Config) -> bool:
    """Whether the old log-probs need a forward of their own before the update.

    Not with one PPO epoch and one mini-batch per step: the update's only forward then runs on the weights that
    sampled, so its detached log-probs are the old ones (the ratio is exactly 1) and a separate pass could not
    change the result. With more epochs or mini-batches the weights move between optimizer steps, and the old
    log-probs must come from before the first one."""
    return cfg.grpo.ppo_epochs > 1 or cfg.trainer.mini_batch_prompts < cfg.trainer.prompts_per_step


def _score(trajs, samples_by_id, cfg: Config, step: int) -> list[Any]:
    from mmsearch_r1.reward import compute_reward

    return [
        compute_reward(t.assistant_texts, samples_by_id[t.sample_id].answers, cfg.reward, cfg.protocol, step)
        for t in trajs
    ]


def validate(
    cfg: Config,
    loop_factory,
    val_samples,
    info: D.DistInfo,
    run: Path,
    step: int,
    save_dir: Path | None = None,
) -> dict[str, float]:
    """Greedy, one response per question, this rank's share; summary over all ranks (eval.summary).

    With `save_dir`, every generation is written there too (`rl.val_only.save_generations`)."""
    from mmsearch_r1.eval.summary import flat_metrics, sample_record, summarize
    from mmsearch_r1.rollout.loop import sampling_params

    share = val_samples[info.rank :: info.world_size]
    loop = loop_factory(sampling_params(cfg.rollout, greedy=True, seed=0))
    trajs = loop.run(share, 1) if share else []
    rewards = _score(trajs, {s.id: s for s in share}, cfg, step)
    by_id = {s.id: s for s in share}
    records = [
        sample_record(by_id[t.sample_id], t, r, profile=cfg.protocol.profile)
        for t, r in zip(trajs, rewards, strict=True)
    ]
    if save_dir is not None:
        from mmsearch_r1.rl.val_only import save_generations

        save_generations(save_dir, info.rank, trajs, records)
    records = [r for part in D.all_gather_objects(records, info) for r in part]
    summary = summarize(records, step=step)
    if info.is_main:
        (run / "val").mkdir(parents=True, exist_ok=True)
        (run / "val" / f"step_{step:04d}.json").write_text(json.dumps(summary, indent=1))
    return flat_metrics(summary, prefix="val")


def train(
    cfg: Config,
    *,
    resume: bool = False,
    progress: Progress | None = None,
    engine_hook: EngineHook | None = None,
) -> TrainResult:
    """Run GRPO as configured (module docstring). `engine_hook(engine, renderer) -> engine` may wrap the HF
    engine (tests force protocol tags around sampled tokens with `rollout.ForcedActionEngine`)."""
    from mmsearch_r1.data.reader import read_many
    from mmsearch_r1.rl import setup as S
    from mmsearch_r1.rollout.engines import build_engine, check_engine
    from mmsearch_r1.rollout.loop import AgentLoop, sampling_params
    from mmsearch_r1.rollout.prompt_filter import filter_prompts, write_report
    from mmsearch_r1.tools import build_tools

    check_engine(cfg.rollout)  # before any model loads: vllm chosen but not installed is one line
    info = D.init_distributed()
    check_train_config(cfg, info.world_size)
    t_cfg, g_cfg, r_cfg = cfg.trainer, cfg.grpo, cfg.rollout
    seed_all(t_cfg.seed + info.rank)
    run = Path(t_cfg.run_dir)
    if info.is_main:
        run.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run / "config.yaml")

    # ==================================================================== models, data, tools, optimizer
    if t_cfg.val_only:
        from mmsearch_r1.model import load_model, load_processor
        from mmsearch_r1.rl.val_only import run_val_only

        m = cfg.model
        renderer = load_processor(m.path, cfg.data.min_pixels, cfg.data.max_pixels)
        model = None  # vLLM loads its own weights
        if r_cfg.engine == "hf":
            model = load_model(m.path, m.compute_dtype, str(info.device), m.attn_implementation)
        return run_val_only(cfg, model, renderer, info, run, validate, engine_hook)
    vllm = r_cfg.engine == "vllm"
    setup = S.build_setup(
        cfg,
        info,
        lr=cfg.optim.lr,
        total_steps=t_cfg.total_steps,
        logprob_temperature=sampling_params(r_cfg).logprob_temperature,
        with_ref=g_cfg.kl_coef > 0,
        gen_copy=not vllm,  # vLLM loads its own generation weights: no HF copy is built for it
    )
    renderer, model, policy, ref = setup.renderer, setup.model, setup.policy, setup.ref
    params, optimizer, scheduler, gen_model = setup.params, setup.optimizer, setup.scheduler, setup.gen_model
    synced = vllm or setup.separate_gen_copy  # the engine holds its own weights: sync after each update
    samples = read_many(cfg.data.train_files, skip_bad_rows=cfg.data.skip_bad_rows).samples
    val_samples = read_many(cfg.data.val_files).samples if cfg.data.val_files else []
    samples, data_report = filter_prompts(samples, renderer, cfg.protocol, r_cfg)  # too long: reported
    if info.is_main:
        write_report(data_report, run / "data_report.json")
    if not samples:
        raise ValueError(
            f"no usable training samples in {cfg.data.train_files} (see {run / 'data_report.json'})"
        )
    by_id = {s.id: s for s in samples}
    engine = gen_engine = build_engine(
        r_cfg,
        renderer,
        model=gen_model,
        model_path=cfg.model.path,
        dtype=cfg.model.compute_dtype,
        seed=t_cfg.seed,
    )
    # tools after the engine: vLLM failed to start with numba (imported by bm25s) already loaded
    tools = build_tools(cfg.search)
    if engine_hook is not None:
        engine = engine_hook(engine, renderer)

    def loop_factory(params):
        return AgentLoop(
            engine=engine, renderer=renderer, tools=tools, protocol=cfg.protocol, rollout=r_cfg, params=params
        )

    o = cfg.optim
    start, data_pos = 0, 0
    if resume:
        state = S.resume(setup, run)
        start, data_pos = state["step"], state["data_position"]
        if synced:
            gen_engine.load_weights(D.iter_full_params(policy, info))
    logger = S.open_logger(cfg, run, info, resume, start)
    model.eval()
    if val_samples and t_cfg.val_before_train and start == 0:
        m = validate(cfg, loop_factory, val_samples, info, run, 0)
        if logger:
            logger.log(0, m)

    search_seen = search_counters(tools)  # per-step differences are logged, summed over ranks
    W, n, share = info.world_size, r_cfg.n, t_cfg.prompts_per_step // info.world_size
    n_mini = t_cfg.prompts_per_step // t_cfg.mini_batch_prompts
    for step in range(start, t_cfg.total_steps):
        t_step = time.perf_counter()
        metrics: dict[str, float] = {}
        # ================================================================ rollout (+ dynamic sampling)
        t0 = time.perf_counter()
        model.eval()  # generate uses its KV cache only in eval mode; Qwen has no dropout to switch
        stream = index_stream(len(samples), t_cfg.seed, cfg.data.shuffle, data_pos)
        kept, kept_rewards, rows, rounds = [], [], [], 0
        kv0 = dict(gen_engine.cache_stats) if hasattr(gen_engine, "cache_stats") else None
        while True:
            picked = [samples[next(stream)] for _ in range(t_cfg.prompts_per_step)]
            data_pos += t_cfg.prompts_per_step
            mine = picked[info.rank * share : (info.rank + 1) * share]
            seed = t_cfg.seed * 1_000_003 + step * 1_009 + rounds
            trajs = loop_factory(sampling_params(r_cfg, seed=seed)).run(mine, n)
            # ============================================================ reward
            rewards = _score(trajs, by_id, cfg, step)
            rows += [
                trajectory_row(t, r, by_id[t.sample_id].data_source)
                for t, r in zip(trajs, rewards, strict=True)
            ]
            totals = torch.tensor([r.total for r in rewards])
            keep = (
                filter_groups_dynamic(totals, n)
                if g_cfg.dynamic_sampling
                else torch.ones(len(trajs), dtype=torch.bool)
            )
            kept += [t for t, k in zip(trajs, keep.tolist(), strict=True) if k]
            kept_rewards += [r.total for r, k in zip(rewards, keep.tolist(), strict=True) if k]
            rounds += 1
            missing = max(0, share - len(kept) // n)
            if not g_cfg.dynamic_sampling or rounds >= g_cfg.dynamic_sampling_max_rounds:
                break
            if D.all_reduce_sums([float(missing)], info)[0] == 0:
                break
        kept, kept_rewards = kept[: share * n], kept_rewards[: share * n]
        if vllm:
            gen_engine.sleep()  # CUDA: its KV cache is released during the update
        elif hasattr(gen_engine, "release_kv"):
            gen_engine.release_kv()  # the HF engine's K/V kept between turns: no trajectory continues
        if kv0 is not None:  # the HF engine's KV reuse this step, summed over ranks
            kv = gen_engine.cache_stats
            got = D.all_reduce_sums([float(kv[k] - kv0[k]) for k in ("hits", "prefill_tokens_saved")], info)
            metrics["rollout/kv_hits"], metrics["rollout/kv_prefill_tokens_saved"] = got
        metrics["perf/time_rollout_s"] = time.perf_counter() - t0
        # ================================================================ advantages
        adv = group_advantages(
            torch.tensor(kept_rewards, dtype=torch.float32), n, g_cfg.adv_estimator, g_cfg.adv_eps
        )
        usable = [(t, a) for t, a in zip(kept, adv.tolist(), strict=True) if t.prompt_ids]
        groups_per_mini = -(-len(usable) // max(1, n_mini))  # ceil: trajectories per mini-batch on this rank
        minis = [usable[i * groups_per_mini : (i + 1) * groups_per_mini] for i in range(n_mini)]
        plan = [micro_batches([t for t, _ in mb], [a for _, a in mb], t_cfg.micro_batch_size) for mb in minis]
        n_micro = [D.all_reduce_max(len(p), info) for p in plan]
        if any(k == 0 for k in n_micro):
            raise RuntimeError(f"step {step + 1}: a mini-batch has no trajectory on any rank")
        batches = [[collate(tr, renderer, info.device, a) for tr, a in p] for p in plan]

        def micro(i: int, k: int, batches: list = batches) -> tuple[dict[str, Any], float]:
            """Micro-batch k of mini-batch i, or (when this rank has fewer) a zero-weight stand-in."""
            bs = batches[i] or [b for mb in batches for b in mb][:1]
            return (bs[k], 1.0) if k < len(batches[i]) else (bs[-1], 0.0)

        # ================================================================ old (and reference) log-probs
        separate_old = old_logprob_pass_needed(cfg)  # else the update's own forward gives them (see there)
        t0 = time.perf_counter()
        old_lp, ref_lp, diff = {}, {}, 0.0
        if separate_old or ref is not None:
            with torch.no_grad():
                for i, k_max in enumerate(n_micro):
                    for k in range(k_max):
                        b, w = micro(i, k)
                        lp = policy(b)[0] if separate_old else None
                        rlp = ref(b)[0] if ref is not None else None  # (collective when sharded: every rank)
                        if w and lp is not None:
                            old_lp[(i, k)] = lp.detach()
                            diff = max(diff, float(((lp - b["engine_logp"]).abs() * b["mask"]).max()))
                        if w and rlp is not None:
                            ref_lp[(i, k)] = rlp.detach()
        metrics["perf/time_logprob_s"] = time.perf_counter() - t0
        # ================================================================ mini-batch updates
        t0 = time.perf_counter()
        model.train()  # (gradient checkpointing applies in train mode)
        sums = {
            "pg_loss": 0.0,
            "kl": 0.0,
            "entropy": 0.0,
            "clipfrac_low": 0.0,
            "clipfrac_high": 0.0,
            "tokens": 0.0,
        }
        grad_norms = []
        for _epoch in range(g_cfg.ppo_epochs):
            for i, k_max in enumerate(n_micro):
                local = sum(agg_normalizer(b["mask"], g_cfg.loss_agg) for b in batches[i])
                normalizer = D.all_reduce_sums([local], info)[0]
                optimizer.zero_grad(set_to_none=True)
                for k in range(k_max):
                    b, w = micro(i, k)
                    logp, ent = policy(b, with_entropy=True)
                    key = (i, k) if w else None
                    if separate_old:
                        old = old_lp[key] if key else logp.detach()
                    else:  # the weights that sampled: these are the old log-probs, ratio exactly 1
                        old = logp.detach()
                        if w:
                            diff = max(diff, float(((old - b["engine_logp"]).abs() * b["mask"]).max()))
                    loss, st = grpo_loss(
                        logp,
                        old,
                        b["advantages"],
                        b["mask"],
                        ref_logp=ref_lp.get(key, logp.detach()) if ref is not None else None,
                        entropy=ent,
                        clip_low=g_cfg.clip_low,
                        clip_high=g_cfg.clip_high,
                        kl_coef=g_cfg.kl_coef,
                        kl_kind=g_cfg.kl_kind,
                        entropy_coef=g_cfg.entropy_coef,
                        agg=g_cfg.loss_agg,
                        normalizer=normalizer,
                    )
                    (loss * (W * w)).backward()
                    tok = float(b["mask"].sum()) * w
                    for name in ("pg_loss", "kl", "entropy"):
                        sums[name] += float(st.get(name, 0.0)) * w
                    sums["clipfrac_low"] += float(st["clipfrac_low"]) * tok
                    sums["clipfrac_high"] += float(st["clipfrac_high"]) * tok
                    sums["tokens"] += tok
                clip = o.grad_clip if o.grad_clip > 0 else float("inf")
                gn = torch.nn.utils.clip_grad_norm_(params, clip)
                gn = gn.full_tensor() if hasattr(gn, "full_tensor") else gn
                grad_norms.append(float(gn))
                optimizer.step()
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        if synced:  # the rollout engine gets the new weights, one tensor at a time
            if vllm:
                gen_engine.wake_up()
            gen_engine.load_weights(D.iter_full_params(policy, info))
        metrics["perf/time_update_s"] = time.perf_counter() - t0
        metrics["rollout/logprob_diff_max"] = max(D.all_gather_objects(diff, info))
        # ================================================================ log
        names = list(sums)
        red = dict(zip(names, D.all_reduce_sums([sums[k] for k in names], info), strict=True))
        updates = max(1, g_cfg.ppo_epochs * n_mini)
        metrics.update(
            {
                "actor/pg_loss": red["pg_loss"] / updates,
                "actor/kl": red["kl"] / updates,
                "actor/entropy": red["entropy"] / updates,
                "actor/clip_frac_low": red["clipfrac_low"] / max(1.0, red["tokens"]),
                "actor/clip_frac_high": red["clipfrac_high"] / max(1.0, red["tokens"]),
                "actor/grad_norm": sum(grad_norms) / len(grad_norms),
                "actor/lr": lr,
            }
        )
        all_rows = [r for part in D.all_gather_objects(rows, info) for r in part]
        metrics.update(rollout_metrics(all_rows))
        metrics["rollout/dynamic_rounds"] = float(rounds)
        search_now = search_counters(tools)
        keys = list(search_now)
        diffs = D.all_reduce_sums([search_now[k] - search_seen[k] for k in keys], info)
        metrics.update(zip(keys, diffs, strict=True))
        search_seen = search_now
        metrics["rollout/trained_trajectories"] = D.all_reduce_sums([float(len(usable))], info)[0]
        seq_tokens = D.all_reduce_sums([float(sum(len(t.input_ids) for t, _ in usable))], info)[0]
        metrics["perf/time_step_s"] = time.perf_counter() - t_step
        metrics["perf/tokens_per_s"] = seq_tokens / max(1e-9, metrics["perf/time_step_s"])
        done = step + 1
        if info.is_main and t_cfg.traces_per_step > 0:
            (run / "traces").mkdir(exist_ok=True)
            with open(run / "traces" / f"step_{done:04d}.jsonl", "w", encoding="utf-8") as fh:
                for t, r in list(zip(trajs, rewards, strict=True))[: t_cfg.traces_per_step]:
                    fh.write(
                        json.dumps(
                            {
                                **t.to_json(renderer.decode),
                                "reward": r.to_dict(),
                                "data_source": by_id[t.sample_id].data_source,
                            },
                            ensure_ascii=False,
                        )
                        + "\n"
                    )
        model.eval()
        if val_samples and t_cfg.val_every > 0 and done % t_cfg.val_every == 0:
            metrics.update(validate(cfg, loop_factory, val_samples, info, run, done))
        if logger:
            logger.log(done, metrics)
        if (t_cfg.save_every > 0 and done % t_cfg.save_every == 0) or done == t_cfg.total_steps:
            S.save(setup, run, done, {"data_position": data_pos}, t_cfg.keep_last)
        if progress is not None:
            progress(done, t_cfg.total_steps, metrics)

    # ==================================================================== export
    final = None
    if t_cfg.total_steps > start or resume:
        state = None
        if vllm and info.enabled:  # gen_model is the sharded compute model: gather the master, export it
            master = ckpt.master_weights_on_main(policy, info)  # collective, one tensor at a time
            dt = getattr(torch, cfg.model.compute_dtype)
            state = {k: v.to(dt) for k, v in master.items()} if master is not None else None
        if info.is_main:  # gen_model holds the current weights (synced after every update), or `state` does
            final = ckpt.save_hf(gen_model, renderer, run / "final", state_dict=state)
    if vllm:
        gen_engine.close()
    D.barrier(info)
    if logger:
        logger.close()
    return TrainResult(run, t_cfg.total_steps, final, run / "metrics.jsonl")
