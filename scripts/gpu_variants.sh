#!/usr/bin/env bash
# jaxgpt GPT-2 124M bf16 train-step variants on one GPU, one process each.
# Usage: scripts/gpu_variants.sh OUT_DIR "label|ENV=...|--extra=args" ...
set -uo pipefail
out=$1; shift
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
gpt2="--n_layer=12 --n_head=12 --n_embd=768 --block_size=1024 --bias=False --dropout=0.0"
gpt2="$gpt2 --dtype=bfloat16 --learning_rate=6e-4 --weight_decay=0.1 --beta2=0.95"
gpt2="$gpt2 --warmup_iters=2000 --lr_decay_iters=600000 --min_lr=6e-5"
for v in "$@"; do
  IFS='|' read -r label envs args <<< "$v"
  line=$(env $envs python -m jaxgpt.cli bench $gpt2 $args --iters=20 --warmup=5 --json 2>"$out/$label.err" | tail -1)
  python - "$label" "$line" <<'PY'
import json, sys
label, line = sys.argv[1], sys.argv[2]
try:
    r = json.loads(line)
    print(f"{label:28s} {r['ms_per_iter']:8.2f} ms  {r['tokens_per_s']:>10,.0f} tok/s  mfu {r['mfu']*100:5.1f}%  compile {r['compile_s']:.1f}s  mem {r['peak_memory_gb']:.1f}GB  loss {r['losses'][-1]:.3f}")
except Exception as e:
    print(f"{label:28s} FAILED ({e})")
PY
  tail -3 "$out/$label.err" | grep -i error
done
