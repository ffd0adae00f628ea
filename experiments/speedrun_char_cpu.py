"""The CPU speedrun: shakespeare_char to val <= 1.90 as fast as this 2-core CPU allows.

    jaxgpt prepare shakespeare_char --input path/to/input.txt
    jaxgpt train experiments/speedrun_char_cpu.py
    jaxgpt train experiments/speedrun_char_cpu.py --init_from=resume --eval_only=True \
        --eval_iters=200 --batch_size=12

nanoGPT's CPU shape (4 layers, 4 heads, 128 embd, block 64, batch 12) with modded-nanogpt's
blocks (rotary embeddings, RMSNorm, ReLU^2, QK-norm without gains), Muon on the blocks'
matrices and a warmup-stable-decay schedule: 300 steps where nanoGPT's CPU config takes 2000.
Expected: `step 300: train loss 1.7802, val loss 1.9023` (20 batches, seed 1337), and from
the second command `step 300: train loss 1.7617, val loss 1.8797` (200 batches of 12);
with --seed=2 / 3 on both commands: val 1.8916 / 1.8928. Wall time: README, "CPU speedrun"
(34.2 s, median of the 3 seeds, where nanoGPT's train.py takes 142.3 s).
"""

config = dict(
    out_dir="out-speedrun-char-cpu",
    eval_interval=300,
    eval_iters=20,
    log_interval=50,
    always_save_checkpoint=False,
    tensorboard_log=False,
    dataset="shakespeare_char",
    batch_size=12,
    block_size=64,
    n_layer=4,
    n_head=4,
    n_embd=128,
    dropout=0.0,
    pos_encoding="rope",
    norm="rmsnorm",
    mlp="relu2",
    qk_norm=True,
    qk_norm_scale=False,
    optimizer="muon",
    muon_lr=0.02,
    learning_rate=3e-3,
    max_iters=300,
    lr_decay_iters=300,
    lr_schedule="wsd",
    cooldown_frac=0.4,
    min_lr=0.0,
    beta2=0.99,
    warmup_iters=50,
)
