"""Evaluate OpenAI's gpt2-medium (350M) on OpenWebText: nanoGPT's config/eval_gpt2_medium.py.

    jaxgpt prepare openwebtext
    jaxgpt train experiments/eval_gpt2_medium.py

Loads the checkpoint through huggingface_hub (or --init_from=path/to/dir), evaluates
500 batches of 8 x 1024 tokens per split and exits (eval_only). It prints one line,
`step 0: train loss X, val loss Y`; expected, as nanoGPT's README measured: train loss
~2.85, val loss ~2.84 (not measured with jaxgpt here: no OpenWebText on this machine).
bfloat16 compute on an accelerator (--dtype=float32 to check on a CPU).
"""

config = dict(
    init_from="gpt2-medium",
    dataset="openwebtext",
    batch_size=8,
    eval_iters=500,  # use more iterations to get a good estimate
    eval_only=True,
    dtype="bfloat16",
)
