"""A small character-level GPT on tiny Shakespeare that trains on a laptop CPU.

    jaxgpt prepare shakespeare_char --input path/to/input.txt   # or let it download
    jaxgpt train experiments/shakespeare_char_cpu.py
    jaxgpt sample --out_dir=out-shakespeare-char-cpu

nanoGPT README's CPU settings: block 64, batch 12, 4 layers, 4 heads, 128 embd, 2000 iters,
lr_decay_iters 2000, dropout 0.0, eval_iters 20. 0.80M params.
Expected: the last evaluation prints `step 2000: train loss 1.7930, val loss 1.9172` (20
batches per split; the same digits on every run, README Results). Over 1000 batches
(`--init_from=resume --eval_only=True --eval_iters=1000`) val is 1.9036; nanoGPT's model
from the same settings measures 1.900 +/- 0.002.
"""

config = dict(
    out_dir="out-shakespeare-char-cpu",
    eval_interval=250,
    eval_iters=20,
    log_interval=10,
    always_save_checkpoint=False,
    dataset="shakespeare_char",
    batch_size=12,
    block_size=64,
    n_layer=4,
    n_head=4,
    n_embd=128,
    dropout=0.0,
    learning_rate=1e-3,
    max_iters=2000,
    lr_decay_iters=2000,
    min_lr=1e-4,
    beta2=0.99,
    warmup_iters=100,
)
