"""PyTorch-side helpers shared by the parity and conversion tests (needs torch)."""

import math

import torch

from jaxgpt.config import GPTConfig, TrainConfig
from jaxgpt.interop import torch_ref

# the parity models are tiny: one thread each is faster than two contending (pytest -n 2)
torch.set_num_threads(1)


def perturbed_ref(config: GPTConfig, seed: int = 0):
    """A torch_ref GPT at nanoGPT's init plus noise, so biases and LayerNorms matter."""
    torch.manual_seed(seed)
    model = torch_ref.GPT(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model.eval()


def nanogpt_lr(it: int, cfg: TrainConfig) -> float:
    """nanoGPT's get_lr, written out independently of jaxgpt.train.get_lr."""
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if it > cfg.lr_decay_iters:
        return cfg.min_lr
    ratio = (it - cfg.warmup_iters) / (cfg.lr_decay_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.learning_rate - cfg.min_lr)


def wsd_lr(it: int, cfg: TrainConfig) -> float:
    """lr_schedule=wsd: nanoGPT's warmup, learning_rate, then a straight line from
    learning_rate at (1 - cooldown_frac) * lr_decay_iters to min_lr at lr_decay_iters."""
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if it > cfg.lr_decay_iters:
        return cfg.min_lr
    start = cfg.lr_decay_iters * (1 - cfg.cooldown_frac)
    if it <= start:
        return cfg.learning_rate
    done = (it - start) / (cfg.lr_decay_iters - start)
    return cfg.learning_rate + done * (cfg.min_lr - cfg.learning_rate)


def schedule_lr(it: int, cfg: TrainConfig) -> float:
    return wsd_lr(it, cfg) if cfg.lr_schedule == "wsd" else nanogpt_lr(it, cfg)


def torch_steps(ref, opt, batches, cfg: TrainConfig, start: int = 0) -> list[float]:
    """nanoGPT's training step: accumulate loss / accum, clip, set lr (times each group's
    lr_scale: Muon's), optimizer step."""
    losses = []
    for i, windows in enumerate(torch.from_numpy(batches).long()):
        for group in opt.param_groups:
            group["lr"] = schedule_lr(start + i, cfg) * group.get("lr_scale", 1.0)
        total = 0.0
        for w in windows:
            loss = ref(w[:, :-1].contiguous(), w[:, 1:].contiguous())[1] / len(windows)
            loss.backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(total)
    return losses
