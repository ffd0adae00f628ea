"""A character-level GPT on tiny Shakespeare: nanoGPT's config/train_shakespeare_char.py.

    jaxgpt prepare shakespeare_char
    jaxgpt train experiments/shakespeare_char.py
    jaxgpt sample --out_dir=out-shakespeare-char

6 layers, 6 heads, 384 embd, block 256, batch 64, dropout 0.2, 5000 iters: 10.65M params.
Expected: the `step N: train loss X, val loss Y` lines reach val loss ~1.47, as nanoGPT's
README measured (1.4697 after ~3 min on one A100; not measured with jaxgpt here). A GPU or
TPU run; use bfloat16 there with --dtype=bfloat16.
"""

config = dict(
    out_dir="out-shakespeare-char",
    eval_interval=250,  # keep frequent because we'll overfit
    eval_iters=200,
    log_interval=10,
    always_save_checkpoint=False,  # only save when val improves
    dataset="shakespeare_char",
    gradient_accumulation_steps=1,
    batch_size=64,
    block_size=256,  # context of up to 256 previous characters
    n_layer=6,
    n_head=6,
    n_embd=384,
    dropout=0.2,
    learning_rate=1e-3,  # with baby networks can afford to go a bit higher
    max_iters=5000,
    lr_decay_iters=5000,  # make equal to max_iters usually
    min_lr=1e-4,  # learning_rate / 10 usually
    beta2=0.99,  # make a bit bigger because number of tokens per iter is small
    warmup_iters=100,
)
