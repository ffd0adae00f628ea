#!/usr/bin/env bash
# GPT-2 124M (block 1024, bf16) train-step throughput on one GPU: jaxgpt vs PyTorch eager and
# torch.compile in alternating runs. Usage: scripts/gpu_bench.sh OUT_DIR [batch_size]
set -uo pipefail
out=${1:-.}; batch=${2:-12}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
gpt2="--n_layer=12 --n_head=12 --n_embd=768 --block_size=1024 --bias=False --dropout=0.0"
gpt2="$gpt2 --dtype=bfloat16 --batch_size=$batch --learning_rate=6e-4 --weight_decay=0.1"
gpt2="$gpt2 --beta2=0.95 --warmup_iters=2000 --lr_decay_iters=600000 --min_lr=6e-5"
nvidia-smi -L
python -c "import jax, flax, optax, orbax.checkpoint as o, torch; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__, jax.devices())"
python -m jaxgpt.cli bench $gpt2 --iters=20 --warmup=5 --compare=torch --rounds=2 \
  --table="$out/gpu_compare_b$batch.md" --plot="$out/gpu_compare_b$batch.png" 2>&1 | tee "$out/gpu_compare_b$batch.log"
