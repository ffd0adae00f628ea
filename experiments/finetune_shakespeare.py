"""Finetune GPT-2 XL on tiny Shakespeare (GPT-2 BPE): nanoGPT's config/finetune_shakespeare.py.

    jaxgpt prepare shakespeare              # 301,966 train / 36,059 val tokens
    jaxgpt train experiments/finetune_shakespeare.py
    jaxgpt sample --out_dir=out-shakespeare --start="ROMEO:"

Starts from OpenAI's gpt2-xl (1558M parameters, downloaded through huggingface_hub) or
from a local Hugging Face GPT-2 directory: --init_from=path/to/dir. Batch 1 x grad accum
32 x block 1024 = 32,768 tokens per iteration, constant lr 3e-5, 20 iterations, evaluated
every 5 on 40 batches; a checkpoint is kept only when val improves. nanoGPT publishes
no loss for this run, only samples (~a few minutes on one A100). Use --dtype=bfloat16 on
an accelerator.
"""

config = dict(
    out_dir="out-shakespeare",
    eval_interval=5,
    eval_iters=40,
    dataset="shakespeare",
    init_from="gpt2-xl",  # the largest GPT-2 model
    always_save_checkpoint=False,  # only save checkpoints if the validation loss improves
    batch_size=1,
    gradient_accumulation_steps=32,
    max_iters=20,
    learning_rate=3e-5,  # finetune at constant lr
    decay_lr=False,
)
