"""The procedural search world and the demo built on it (docs/demo.md).

- `build_world(out_dir, seed, size)` (`world.build`): entities with drawn image identities and facts, questions in
  the released parquet schema (head = search-free, tail = search-required), a web of pages and titled pictures
  with their local indexes, a search config, a tokenizer corpus and SFT conversations.
- `run_demo(out_dir, seed, quick)` (`world.demo`): world -> tiny model -> SFT -> eval -> GRPO -> eval -> report.

Imports are lazy so that `import mmsearch_r1.world` stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_world", "run_demo"]


def __getattr__(name: str) -> Any:
    if name == "build_world":
        from mmsearch_r1.world.build import build_world

        return build_world
    if name == "run_demo":
        from mmsearch_r1.world.demo import run_demo

        return run_demo
    raise AttributeError(name)
