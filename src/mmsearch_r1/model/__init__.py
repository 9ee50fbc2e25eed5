"""Model layer: load Qwen-VL checkpoints, build the tiny offline model, render chats, compute mRoPE positions.

Importing this package does not import torch; the functions import it when called.
"""

from mmsearch_r1.model.chat import ChatRenderer, Rendered
from mmsearch_r1.model.loading import load_model, load_processor
from mmsearch_r1.model.positions import compute_position_ids
from mmsearch_r1.model.special_tokens import SpecialTokens
from mmsearch_r1.model.tiny import TinySizes, build_tiny_model

__all__ = [
    "ChatRenderer",
    "Rendered",
    "SpecialTokens",
    "TinySizes",
    "build_tiny_model",
    "compute_position_ids",
    "load_model",
    "load_processor",
]
