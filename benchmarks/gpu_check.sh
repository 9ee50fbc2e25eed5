#!/usr/bin/env bash
# The vLLM engine on one NVIDIA GPU (needs `pip install -e '.[all,vllm]'`): VL rollouts, log-prob gap, weight
# sync, sleep mode, tokens/s of both engines, then 2 GRPO steps in bf16 (benchmarks/gpu_check.py). Under 8
# minutes; the last line printed is one JSON object.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
timeout 240 python benchmarks/gpu_check.py engine "$out/engine.json"
timeout 240 python benchmarks/gpu_check.py train "$out/train.json"
python - "$out" <<'PY'
import json, sys, torch
d = sys.argv[1]
res = {"gpu": torch.cuda.get_device_name(0)}
for part in ("engine", "train"):
    res.update(json.load(open(f"{d}/{part}.json")))
print(json.dumps(res))
PY
