"""Progress for the CLI: a tqdm bar on a terminal, plain periodic lines otherwise.

`progress_bar(total=..., desc=..., file=sys.stderr, ...)` returns a tqdm bar when `file` is a terminal. When it
is a file or a pipe (a log), a bar's carriage-return frames would fill the log, so it returns a `PlainProgress`
instead: one line `desc: n/total (p%) key=value ...` when it starts, at most one every `every_s` seconds (15) while
it advances, and one when it closes. Both take the calls the commands use: `update(k)`, `n = ...; refresh()`,
`total = ...`, `set_postfix(**kv)`, `close()`.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

EVERY_S = 15.0


class PlainProgress:
    """Periodic plain progress lines (no carriage returns, no ANSI codes)."""

    def __init__(
        self,
        total: int | None = None,
        desc: str = "",
        unit: str = "it",
        initial: int = 0,
        file: TextIO | None = None,
        every_s: float = EVERY_S,
        clock: Any = time.monotonic,
    ) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.n = initial
        self.file = file if file is not None else sys.stderr
        self.every_s = every_s
        self._clock = clock
        self._postfix = ""
        self._last_t: float | None = None
        self._last_n: int | None = None
        self._closed = False

    def _line(self) -> str:
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        pct = f" ({100.0 * self.n / self.total:.0f}%)" if self.total else ""
        return f"{self.desc}: {count} {self.unit}{pct}{(' ' + self._postfix) if self._postfix else ''}"

    def _emit(self, force: bool = False) -> None:
        now = self._clock()
        due = self._last_t is None or now - self._last_t >= self.every_s
        if (force or due) and self.n != self._last_n:
            print(self._line(), file=self.file, flush=True)
            self._last_t, self._last_n = now, self.n

    def update(self, k: int = 1) -> None:
        self.n += k
        self._emit()

    def refresh(self) -> None:
        self._emit()

    def set_postfix(self, **kv: Any) -> None:
        self._postfix = " ".join(f"{k}={v}" for k, v in kv.items())

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._emit(force=True)


def _is_tty(file: Any) -> bool:
    try:
        return bool(file.isatty())
    except (AttributeError, ValueError):
        return False


def progress_bar(
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    initial: int = 0,
    file: TextIO | None = None,
    leave: bool = True,
    disable: bool | None = False,
    every_s: float = EVERY_S,
) -> Any:
    """A tqdm bar on a terminal, else `PlainProgress` (see the module docstring). `disable=True`: nothing shown."""
    out = file if file is not None else sys.stderr
    if disable is True:
        return PlainProgress(total, desc, unit, initial, file=_Null(), every_s=every_s)
    if _is_tty(out):
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, initial=initial, file=out, leave=leave)
    return PlainProgress(total, desc, unit, initial, file=out, every_s=every_s)


class _Null:
    def write(self, _s: str) -> int:
        return 0

    def flush(self) -> None:
        pass


class StageBars:
    """One bar per named stage, the previous closed when a new stage starts: `bars(stage, done, total)`.

    Used as the `progress` callback of the demo and the study; `titles` maps a stage to its bar's label;
    `enabled=False` shows nothing. `close()` closes the open bar (call it in a `finally`)."""

    def __init__(self, titles: dict[str, str] | None = None, enabled: bool = True) -> None:
        self.titles, self.enabled = titles or {}, enabled
        self.stage: str | None = None
        self.bar: Any = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        if stage != self.stage:
            self.close()
            self.stage = stage
            self.bar = progress_bar(total=total, desc=self.titles.get(stage, stage), file=sys.stderr)
        if self.bar.total != total:
            self.bar.total = total
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar, self.stage = None, None
