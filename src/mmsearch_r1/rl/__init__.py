"""rl layer: GRPO math (`grpo`), chunked token log-probs (`logprobs`), lr schedules (`schedules`), the trainer.

Kept light: import the submodule you need (`from mmsearch_r1.rl.grpo import grpo_loss`); nothing is imported here.
"""
