"""Progress written to a file or pipe is plain periodic lines, never carriage-return frames; a terminal gets tqdm."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

from mmsearch_r1.cli.progress import PlainProgress, progress_bar


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_plain_progress_prints_at_most_one_line_per_interval() -> None:
    out, clock = io.StringIO(), Clock()
    bar = PlainProgress(total=100, desc="train", unit="step", file=out, every_s=10.0, clock=clock)
    for i in range(100):
        clock.t = i * 0.5  # 100 updates over 50 s
        bar.set_postfix(reward=f"{i / 100:.2f}")
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()
    assert lines[0] == "train: 1/100 step (1%) reward=0.00"
    assert lines[-1] == "train: 100/100 step (100%) reward=0.99"
    assert 5 <= len(lines) <= 7  # start, one per 10 s, end


def test_pipe_gets_plain_progress_and_a_terminal_gets_tqdm() -> None:
    assert isinstance(progress_bar(total=3, file=io.StringIO()), PlainProgress)
    master, slave = os.openpty()
    with os.fdopen(slave, "w") as tty:
        bar = progress_bar(total=3, desc="x", file=tty)
        assert type(bar).__name__ == "tqdm"
        bar.close()
    os.close(master)


def test_world_build_log_has_no_carriage_returns(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "mmsearch_r1.cli",
            "world",
            "build",
            "--out",
            str(tmp_path / "w"),
            "--size",
            "small",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "\r" not in res.stderr
    progress = [ln for ln in res.stderr.splitlines() if "/" in ln and "item" in ln]
    assert progress and len(res.stderr) < 20_000
