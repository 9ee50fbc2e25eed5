"""Rule-based outcome reward: answer normalization, EM/SubEM matching and `compute_reward`.

Layer 2: no torch. `compute_reward(turns, answers, reward_cfg, protocol_cfg, step)` is a pure function of the
assistant turns and the gold answers; see `reward/outcome.py` for the exact formula.
"""

from mmsearch_r1.reward.normalize import (
    exact_match,
    exact_match_original,
    normalize_answer,
    normalize_answer_original,
    parse_candidates,
    sub_exact_match,
    sub_exact_match_original,
)
from mmsearch_r1.reward.outcome import REWARD_MODES, compute_reward, gold_list, search_penalty_at

__all__ = [
    "REWARD_MODES",
    "compute_reward",
    "exact_match",
    "exact_match_original",
    "gold_list",
    "normalize_answer",
    "normalize_answer_original",
    "parse_candidates",
    "search_penalty_at",
    "sub_exact_match",
    "sub_exact_match_original",
]
