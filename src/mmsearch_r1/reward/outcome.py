"""The outcome reward of MMSearch-R1: exact match times a search penalty, plus a format term.

    reward = (1 - a) * acc * penalty + a * format            a = RewardConfig.format_weight (0.1)

- `acc` (0/1): the final answer (last `<answer>...</answer>` of the last assistant turn, read even when the
  format is broken) matches the ground truth or any candidate: EM (normalized equality) or SubEM (normalized
  gold is a substring of the normalized prediction), per `RewardConfig.mode`.
- `format` (0/1): `turns.format_check(turns, protocol_cfg).ok` (`validate_turns` under the default profile).
- `penalty`: when acc = 1 and at least one search was made, `1 - p`; with `penalty_per_search`,
  `(1 - p) ** n_searches` (each search costs the factor once); otherwise 1. Searches are counted over all
  turns whose action parses as a search, even if the trajectory's format is broken.
- `p` = `search_penalty_at(step, cfg)`: `search_penalty`, or, when `penalty_warmup_steps = W > 0`, a linear
  ramp from `penalty_warmup_start` at step 0 to `search_penalty` at step W, constant after. A negative p is a
  bonus for searching (penalty > 1), which the warm-up uses to encourage early exploration of the tools.

Under `protocol_cfg.profile == "original"` the format term, the search count, the answer extraction and the
matching follow the released code instead (`protocol_original`, `normalize.*_original`; the table in
docs/protocol_and_reward.md): four fixed shapes, searches counted by tag text in the turns before the last, an
empty answer is an answer, ASCII-only punctuation removal, empty-equals-empty matches.

With the defaults the reachable rewards are 1.0 (correct, no search, format ok), 0.91 (correct, searched,
format ok), 0.90 (correct, no search, bad format), 0.81 (correct, searched, bad format), 0.10 (wrong, format ok)
and 0.0. The reward sees only the assistant turns and the gold answers.
"""

from __future__ import annotations

from collections.abc import Sequence

from mmsearch_r1.config import ProtocolConfig, RewardConfig
from mmsearch_r1.protocol import count_searches, extract_final_answer
from mmsearch_r1.reward.normalize import (
    exact_match,
    exact_match_original,
    parse_candidates,
    sub_exact_match,
    sub_exact_match_original,
)
from mmsearch_r1.turns import format_check
from mmsearch_r1.types import Answers, RewardOutput

REWARD_MODES = ("EM", "SubEM")


def search_penalty_at(step: int | None, cfg: RewardConfig) -> float:
    """The search penalty p in force at training step `step` (0-based).

    Without warm-up (`penalty_warmup_steps == 0`) or with `step=None` (evaluation) this is `search_penalty`.

    >>> cfg = RewardConfig(search_penalty=0.1, penalty_warmup_steps=10, penalty_warmup_start=-0.1)
    >>> [round(search_penalty_at(s, cfg), 6) for s in (0, 5, 10, 20)]
    [-0.1, 0.0, 0.1, 0.1]
    """
    w = cfg.penalty_warmup_steps
    if w < 0:
        raise ValueError(f"reward.penalty_warmup_steps must be >= 0, got {w}")
    if w == 0 or step is None:
        return cfg.search_penalty
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    frac = min(step, w) / w
    return cfg.penalty_warmup_start + (cfg.search_penalty - cfg.penalty_warmup_start) * frac


def gold_list(answers: Answers | Sequence[str] | str) -> list[str]:
    """All accepted gold answers: `Answers.all()`, or a list / JSON-string list (see `parse_candidates`)."""
    golds = answers.all() if isinstance(answers, Answers) else parse_candidates(answers)
    golds = [g for g in golds if g.strip()]
    if not golds:
        raise ValueError("no gold answers: the ground truth and the candidate list are both empty")
    return golds


def compute_reward(
    turns: Sequence[str],
    answers: Answers | Sequence[str] | str,
    reward_cfg: RewardConfig,
    protocol_cfg: ProtocolConfig,
    step: int | None = None,
) -> RewardOutput:
    """Score one trajectory from its assistant turns (decoded text) and its gold answers.

    Components of the output: acc, format, penalty (the factor applied), search_penalty (p used),
    n_searches, n_image_searches, n_text_searches, answered (1 if a final answer was found).

    >>> from mmsearch_r1.config import ProtocolConfig, RewardConfig
    >>> turns = [
    ...     "<reason>I do not recognise this building.</reason><search><img></search>",
    ...     "<reason>The matches show the Louvre pyramid.</reason><answer>The Louvre</answer>",
    ... ]
    >>> out = compute_reward(turns, ["Louvre", "Musée du Louvre"], RewardConfig(), ProtocolConfig())
    >>> round(out.total, 6), out.components["acc"], out.components["format"], out.components["n_searches"]
    (0.91, 1.0, 1.0, 1.0)
    >>> round(compute_reward(turns[1:], ["Louvre"], RewardConfig(), ProtocolConfig()).total, 6)
    1.0
    """
    if reward_cfg.mode not in REWARD_MODES:
        raise ValueError(f"reward.mode must be one of {REWARD_MODES}, got {reward_cfg.mode!r}")
    a = reward_cfg.format_weight
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"reward.format_weight must be in [0, 1], got {a}")
    golds = gold_list(answers)

    turns = list(turns)
    check = format_check(turns, protocol_cfg)
    if protocol_cfg.profile == "original":
        from mmsearch_r1.protocol_original import final_answer_original, search_counts_original

        pred = final_answer_original(turns)
        match = exact_match_original if reward_cfg.mode == "EM" else sub_exact_match_original
        n_image, n_text = search_counts_original(turns)
    else:
        pred = extract_final_answer(turns)
        match = exact_match if reward_cfg.mode == "EM" else sub_exact_match
        n_image, n_text = count_searches(check.actions)
    acc = 1.0 if match(pred, golds) else 0.0
    fmt = 1.0 if check.ok else 0.0

    n_searches = n_image + n_text
    p = search_penalty_at(step, reward_cfg)
    penalty = 1.0
    if acc and n_searches > 0:
        penalty = (1.0 - p) ** n_searches if reward_cfg.penalty_per_search else 1.0 - p

    total = (1.0 - a) * acc * penalty + a * fmt
    return RewardOutput(
        total=total,
        components={
            "acc": acc,
            "format": fmt,
            "penalty": penalty,
            "search_penalty": p,
            "n_searches": float(n_searches),
            "n_image_searches": float(n_image),
            "n_text_searches": float(n_text),
            "answered": 1.0 if pred is not None else 0.0,
        },
    )
