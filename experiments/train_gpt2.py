"""GPT-2 124M on OpenWebText: nanoGPT's config/train_gpt2.py.

    jaxgpt prepare openwebtext              # ~9B train tokens, ~54 GB download + bins
    jaxgpt train experiments/train_gpt2.py
    jaxgpt sample --out_dir=out-gpt2 --start="The meaning of life is"

12 layers, 12 heads, 768 embd, block 1024, no biases, vocab padded to 50304; batch 12 x
block 1024 x grad accum 40 = 491,520 tokens per iteration (nanoGPT: 5 accumulation steps
on each of 8 GPUs), lr 6e-4 with 2000 warmup iters, cosine to 6e-5 over 600k iters,
weight decay 0.1, beta2 0.95, grad clip 1.0. bfloat16 compute (a GPU or TPU run).
Expected: val loss ~2.85 in the `step N` lines, as nanoGPT's README measured (~4 days
on 8x A100 40GB; not measured with jaxgpt here). On a mesh of N devices the
batch must divide by N: e.g. 8 devices, --batch_size=96 --gradient_accumulation_steps=5.
"""

config = dict(
    out_dir="out-gpt2",
    dataset="openwebtext",
    batch_size=12,
    block_size=1024,
    gradient_accumulation_steps=5 * 8,
    vocab_size=50304,  # 50257 rounded up to a multiple of 64, as nanoGPT
    n_layer=12,
    n_head=12,
    n_embd=768,
    dropout=0.0,
    bias=False,
    learning_rate=6e-4,
    max_iters=600000,
    lr_decay_iters=600000,
    warmup_iters=2000,
    min_lr=6e-5,
    weight_decay=1e-1,
    beta1=0.9,
    beta2=0.95,
    grad_clip=1.0,
    eval_interval=1000,
    eval_iters=200,
    log_interval=10,
    dtype="bfloat16",
)
