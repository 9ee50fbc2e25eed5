"""eval layer: `evaluate(...)` (greedy rollouts, scored, summarized, always written), the baseline policies,
the LLM judge and the summary tables (see docs/eval.md). Light at import time: no torch until a model loads.
"""

from mmsearch_r1.eval.evaluate import evaluate, evaluate_model
from mmsearch_r1.eval.judge import JudgeConfig, LLMJudge, Verdict, load_judge_config, parse_verdict
from mmsearch_r1.eval.policies import POLICIES, Policy, RagEngine, build_policy
from mmsearch_r1.eval.summary import flat_metrics, group_metrics, sample_record, summarize, summary_markdown

__all__ = [
    "POLICIES",
    "JudgeConfig",
    "LLMJudge",
    "Policy",
    "RagEngine",
    "Verdict",
    "build_policy",
    "evaluate",
    "evaluate_model",
    "flat_metrics",
    "group_metrics",
    "load_judge_config",
    "parse_verdict",
    "sample_record",
    "summarize",
    "summary_markdown",
]
