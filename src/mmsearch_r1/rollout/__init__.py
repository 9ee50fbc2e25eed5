"""rollout layer: `Trajectory`, the agent loop, generation engines, the rollout prompts (see docs/rollout.md).

Light at import time: the HF engine (torch, transformers) is imported from `mmsearch_r1.rollout.hf_engine`.
"""

from mmsearch_r1.rollout.engine import (
    Engine,
    ForcedActionEngine,
    GenerationOutput,
    GenerationRequest,
    SamplingParams,
    ScriptedEngine,
)
from mmsearch_r1.rollout.loop import AgentLoop, run_rollouts, sampling_params
from mmsearch_r1.rollout.prompts import PromptSet, allowed_next_actions, get_prompt_set
from mmsearch_r1.rollout.rendering import RendererAdapter
from mmsearch_r1.rollout.trajectory import (
    FINISH_REASONS,
    TokenIds,
    ToolCallRecord,
    Trajectory,
    TurnRecord,
    check_invariants,
    write_jsonl,
)

__all__ = [
    "FINISH_REASONS",
    "AgentLoop",
    "Engine",
    "ForcedActionEngine",
    "GenerationOutput",
    "GenerationRequest",
    "PromptSet",
    "RendererAdapter",
    "SamplingParams",
    "ScriptedEngine",
    "TokenIds",
    "ToolCallRecord",
    "Trajectory",
    "TurnRecord",
    "allowed_next_actions",
    "check_invariants",
    "get_prompt_set",
    "run_rollouts",
    "sampling_params",
    "write_jsonl",
]
