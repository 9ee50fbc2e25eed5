"""Drop the training prompts that cannot be rolled out, when the data loads, and say which.

A sample whose first turn (system prompt, question, its images at the configured pixel budget) renders to more
than `rollout.max_prompt_tokens` tokens, carries more than `rollout.max_images` images, or cannot be rendered,
would only ever become an "error" trajectory with reward 0. `filter_prompts` renders each sample's first turn
exactly as the agent loop does (`AgentLoop._start`), keeps the others and returns a report:

    {"n_read": 1000, "n_kept": 998, "n_filtered": 2, "max_prompt_tokens": 4096, "max_images": 4,
     "filtered": [{"id": "q17", "reason": "prompt has 5210 tokens, more than max_prompt_tokens=4096"}, ...]}

which the trainer writes to `RUN_DIR/data_report.json` (`write_report`: temp file, then rename) and logs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmsearch_r1.config import ProtocolConfig, RolloutConfig
from mmsearch_r1.rollout.prompts import get_prompt_set
from mmsearch_r1.rollout.rendering import RendererAdapter
from mmsearch_r1.types import Sample

log = logging.getLogger(__name__)


def prompt_problem(sample: Sample, r: RendererAdapter, prompts: Any, protocol, rollout) -> str | None:
    """Why `sample` cannot start a rollout, or None."""
    try:
        rendered = r.render_first_turn(prompts.first_turn(sample, protocol))
    except (ValueError, OSError, TypeError) as e:
        return f"cannot render the first turn: {e}"
    if len(rendered.input_ids) > rollout.max_prompt_tokens:
        return f"prompt has {len(rendered.input_ids)} tokens, more than max_prompt_tokens={rollout.max_prompt_tokens}"
    if len(rendered.images) > rollout.max_images:
        return f"{len(rendered.images)} images, more than max_images={rollout.max_images}"
    return None


def filter_prompts(
    samples: Sequence[Sample], renderer: Any, protocol: ProtocolConfig, rollout: RolloutConfig
) -> tuple[list[Sample], dict[str, Any]]:
    """(the samples that fit, the report described in the module docstring)."""
    r = RendererAdapter(renderer)
    prompts = get_prompt_set(rollout.prompt_set)
    kept, filtered = [], []
    for s in samples:
        why = prompt_problem(s, r, prompts, protocol, rollout)
        if why is None:
            kept.append(s)
        else:
            filtered.append({"id": s.id, "reason": why})
    report = {
        "n_read": len(samples),
        "n_kept": len(kept),
        "n_filtered": len(filtered),
        "max_prompt_tokens": rollout.max_prompt_tokens,
        "max_images": rollout.max_images,
        "filtered": filtered,
    }
    if filtered:
        log.warning(
            "%d of %d training prompts filtered (first: %s: %s)",
            len(filtered),
            len(samples),
            filtered[0]["id"],
            filtered[0]["reason"],
        )
    return kept, report


def write_report(report: dict[str, Any], path: str | Path) -> Path:
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")
    tmp.rename(p)
    return p
