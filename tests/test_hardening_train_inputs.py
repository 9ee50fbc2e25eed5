"""Resume tolerates a torn last metrics line (dropped, said so) and rewrites the file atomically; missing input
paths fail before the model loads or config.yaml is written."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from mmsearch_r1.config_io import load_config
from mmsearch_r1.rl.metrics import MetricLogger, read_metrics


def _write_rows(path: Path, steps: range, torn: str = "") -> None:
    text = "".join(json.dumps({"step": s, "loss": s / 10}) + "\n" for s in steps)
    path.write_text(text + torn, encoding="utf-8")


def test_torn_last_line_is_dropped_on_resume_and_file_rewritten(tmp_path: Path, caplog) -> None:
    path = tmp_path / "metrics.jsonl"
    _write_rows(path, range(1, 6), torn='{"step": 6, "lo')
    with pytest.raises(ValueError, match=r"metrics.jsonl line 6: .*torn last line"):
        read_metrics(path)
    caplog.set_level(logging.WARNING)
    logger = MetricLogger(tmp_path, resume_step=4)
    assert "dropped a torn last line" in caplog.text
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3, 4]  # rows after the checkpoint step go too
    logger.log(5, {"loss": 0.55})
    logger.close()
    rows = read_metrics(path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5] and rows[-1]["loss"] == 0.55
    assert not (tmp_path / "metrics.jsonl.tmp").exists()


def test_a_bad_line_in_the_middle_is_an_error_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{oops\n{"step": 3}\n')
    for kw in ({}, {"drop_torn_tail": True}):
        with pytest.raises(ValueError, match=r"metrics.jsonl line 2"):
            read_metrics(path, **kw)
    with pytest.raises(ValueError, match="line 2"):
        MetricLogger(tmp_path, resume_step=3)
    assert path.read_text() == '{"step": 1}\n{oops\n{"step": 3}\n'  # untouched


def test_missing_paths_fail_before_model_load_and_config_write(tmp_path: Path) -> None:
    from mmsearch_r1.rl.trainer import check_train_config, train

    run = tmp_path / "run"
    cfg = load_config(
        None,
        [
            f"model.path={tmp_path / 'no_model'}",
            f"data.train_files=[{tmp_path / 'no_train.parquet'}]",
            f"data.val_files=[{tmp_path / 'no_val.parquet'}]",
            f"search.text_backend.index_dir={tmp_path / 'no_index'}",
            f"search.image_backend={{type: replay, root: {tmp_path / 'no_cache'}}}",
            f"trainer.run_dir={run}",
        ],
    )
    with pytest.raises(ValueError) as ei:
        check_train_config(cfg)
    msg = str(ei.value)
    for part in (
        "model.path",
        "no_train.parquet",
        "no_val.parquet",
        "text_backend.index_dir",
        "image_backend.root",
    ):
        assert part in msg
    with pytest.raises(ValueError, match="no_train.parquet"):
        train(cfg)
    assert not (run / "config.yaml").exists()
