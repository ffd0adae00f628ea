"""nanoGPT's train.py loop on the project's PyTorch reference, for end-to-end wall times.

    python scripts/torch_train.py experiments/shakespeare_char_cpu.py [--key=value ...]

Same config keys and data folder as `jaxgpt train` (data_dir/dataset/{train,val}.bin),
nanoGPT's loop: random windows per batch (torch RNG), the lr schedule (lr_schedule), AdamW
with nanoGPT's groups (optimizer=muon: torch_ref's Muon and AdamW groups), clipping,
`estimate_loss` over eval_iters batches of each split every
eval_interval. No checkpoints (nanoGPT skips them on CPU runs that do not improve either
way; jaxgpt's are asynchronous). Prints nanoGPT's lines and, at the end, the wall time.
"""

import sys
import time

import numpy as np
import torch

from jaxgpt import data, train
from jaxgpt.config import load_train_config
from jaxgpt.interop import torch_ref


def get_batch(split: np.ndarray, batch_size: int, block_size: int):
    """nanoGPT's: batch_size random windows, x and y = the same window shifted by one."""
    ix = torch.randint(len(split) - block_size, (batch_size,))
    w = torch.stack([torch.from_numpy(split[i : i + block_size + 1].astype(np.int64)) for i in ix])
    return w[:, :-1].contiguous(), w[:, 1:].contiguous()


@torch.no_grad()
def estimate_loss(model, splits: dict, cfg) -> dict:
    model.eval()
    out = {}
    for name, split in splits.items():
        losses = [
            model(*get_batch(split, cfg.batch_size, cfg.block_size))[1].item()
            for _ in range(cfg.eval_iters)
        ]
        out[name] = float(np.mean(losses))
    model.train()
    return out


def main(argv: list[str]) -> None:
    t_start = time.perf_counter()
    config_file = argv[0] if argv and not argv[0].startswith("--") else None
    cfg = load_train_config(config_file, argv[1:] if config_file else argv)
    folder = data.dataset_dir(cfg.data_dir, cfg.dataset)
    splits = {
        s: np.memmap(folder / f"{s}.bin", dtype=np.uint16, mode="r") for s in ("train", "val")
    }
    vocab = data.load_meta(cfg.data_dir, cfg.dataset)["vocab_size"]
    torch.manual_seed(cfg.seed)
    model = torch_ref.GPT(cfg.model_config(vocab))
    optimizer = model.configure_optimizers(
        cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2), torch_ref.muon_settings(cfg)
    )
    for it in range(cfg.max_iters + 1):
        if it % cfg.eval_interval == 0 or it == cfg.max_iters:
            losses = estimate_loss(model, splits, cfg)
            print(f"step {it}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
        if it == cfg.max_iters:
            break
        for group in optimizer.param_groups:
            group["lr"] = float(train.get_lr(it, cfg)) * group.get("lr_scale", 1.0)
        t0 = time.perf_counter()
        _, loss = model(*get_batch(splits["train"], cfg.batch_size, cfg.block_size))
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if it % cfg.log_interval == 0:
            dt = time.perf_counter() - t0
            print(f"iter {it}: loss {loss.item():.4f}, time {dt * 1000:.2f}ms")
    print(f"wall {time.perf_counter() - t_start:.2f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
