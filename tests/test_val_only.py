"""`trainer.val_only`: the starting policy is evaluated on the validation files, every generation is saved, and
nothing is trained (no checkpoint, no export)."""

from __future__ import annotations

import json

from tests.test_trainer import build_world, forced_hook, train_config


def test_val_only_saves_every_generation_and_trains_nothing(tiny_model_dir, tmp_path):
    from mmsearch_r1.rl.trainer import train

    world = build_world(tmp_path / "world")
    save = tmp_path / "gens"
    for profile in ("default", "original"):
        run = tmp_path / f"run_{profile}"
        cfg = train_config(
            tiny_model_dir, world, run,
            **{"trainer.val_only": True, "trainer.val_only_save_dir": save / profile, "protocol.profile": profile},
        )  # fmt: skip
        cfg.data.train_files = []  # not needed for evaluation
        result = train(cfg, engine_hook=forced_hook())
        assert result.steps == 0 and result.final_dir is None
        assert not (run / "checkpoints").exists() and not (run / "final").exists()
        lines = [json.loads(x) for x in (save / profile / "generations_rank0.jsonl").read_text().splitlines()]
        from mmsearch_r1.data.reader import read_many

        val = read_many(cfg.data.val_files).samples
        assert sorted(x["id"] for x in lines) == sorted(s.id for s in val)
        for x in lines:
            assert x["trajectory"]["turns"] and "reward" in x and x["finish_reason"]
        assert (run / "val" / "step_0000.json").is_file()
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [0] and any(k.startswith("val/") for k in rows[0])
