"""mmsearch-r1: train vision-language models with reinforcement learning to search on demand.

Layers (each imports only from those above it; see docs/architecture.md):
  1. types, config, registry
  2. protocol, reward, data, search      (no torch)
  3. tools
  4. model
  5. rollout
  6. rl, eval
  7. cli, servers
"""

__version__ = "0.1.0"
