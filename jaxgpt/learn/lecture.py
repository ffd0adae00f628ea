"""`jaxgpt lecture`: each stage of stages.py trained with the lecture's settings, evaluated
on both splits, and tabled against the lecture's own validation losses.

The text is tiny Shakespeare's characters (--input, $JAXGPT_SHAKESPEARE, the prepared
dataset or a download), split 90/10; the table names the text it used and marks the rows
run with settings other than the lecture's. Training and evaluation reuse the project's code:
data.get_batch for the batches, train.train_steps (several steps per compiled call,
lax.scan) and train.eval_loss.
"""

import dataclasses
import functools
import hashlib
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxgpt import data, train
from jaxgpt.config import ConfigError, TrainConfig
from jaxgpt.learn.stages import LECTURE, STAGES, Stage
from jaxgpt.model import unbox
from jaxgpt.prep import chars
from jaxgpt.prep.tokenizer import CharTokenizer


def parse_stages(text: str) -> list[int]:
    """'1-6', '2,5,7' or 'all' -> sorted stage numbers (1-based)."""
    if text == "all":
        return list(range(1, len(STAGES) + 1))
    out = set()
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        try:
            out.update(range(int(lo), int(hi or lo) + 1))
        except ValueError:
            raise ConfigError(f"--stages {text!r}: use numbers 1-7, ranges 1-6, or all") from None
    if not out or min(out) < 1 or max(out) > len(STAGES):
        raise ConfigError(f"--stages {text!r}: stages are numbered 1 to {len(STAGES)}")
    return sorted(out)


def stage_config(stage: Stage, overrides: dict | None = None) -> TrainConfig:
    """The TrainConfig of a stage: LECTURE <- the stage's settings <- overrides."""
    fields = {**LECTURE, **stage.settings, **(overrides or {})}
    return TrainConfig(**fields, decay_lr=False, grad_clip=0.0, bias=True)


def lecture_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """torch.optim.AdamW(lr): constant lr, betas (0.9, 0.999), eps 1e-8, decay on all params."""
    return optax.adamw(
        cfg.learning_rate, b1=cfg.beta1, b2=cfg.beta2, eps=1e-8, weight_decay=cfg.weight_decay
    )


def init_model(stage: Stage, cfg: TrainConfig, vocab_size: int) -> tuple[nn.Module, dict]:
    model = stage.make_model(cfg.model_config(vocab_size))
    idx = jnp.zeros((1, cfg.block_size), jnp.int32)
    return model, unbox(model.init(jax.random.key(cfg.seed), idx)["params"])


def count_params(stage: Stage, vocab_size: int = 65) -> int:
    """Every parameter, as the lecture's `sum(p.numel() ...)` (at no cost: eval_shape)."""
    cfg = stage_config(stage)
    shapes = jax.eval_shape(lambda: init_model(stage, cfg, vocab_size)[1])
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(shapes))


@dataclasses.dataclass
class Text:
    """The lecture's text as token splits, and where it came from (printed with the table)."""

    splits: dict  # {train, val}: uint16 token arrays, 90/10
    vocab_size: int
    source: str  # e.g. "--input input.txt", "data/shakespeare_char (jaxgpt prepare ...)"
    tiny_shakespeare: bool  # whether it is the lecture's text (its sha256)


def find_text(input_path: str | None, data_dir: str) -> tuple[str, str, str]:
    """Tiny Shakespeare as (text, where it came from, the path or address read): --input,
    else $JAXGPT_SHAKESPEARE, else the dataset `jaxgpt prepare shakespeare_char` wrote to
    data_dir (decoded), else prepare's cache or a download. The notebook finds it so too."""
    dataset = "shakespeare_char"
    prepared = data.dataset_dir(data_dir, dataset)
    env = os.environ.get(chars.SHAKESPEARE_ENV)
    if input_path:
        return chars.read_text(input_path), f"--input {input_path}", input_path
    if env:
        return chars.read_text(env), f"${chars.SHAKESPEARE_ENV}={env}", env
    if (prepared / "meta.json").is_file():
        meta = data.load_meta(data_dir, dataset)
        if meta["kind"] != "char":
            raise data.DataError(f"{prepared} is not a character dataset: pass --input FILE")
        tok = CharTokenizer(meta["chars"])
        parts = (
            data.load_split(data_dir, dataset, s, meta["vocab_size"], meta.get(f"{s}_tokens"))
            for s in data.SPLITS
        )
        text = "".join(tok.decode(p) for p in parts)
        return text, f"{prepared} (jaxgpt prepare shakespeare_char)", str(prepared)
    cached = chars.cache_dir() / "tinyshakespeare.txt"
    if cached.is_file():
        source, path = f"tiny Shakespeare cached at {cached}", str(cached)
    else:
        source, path = f"tiny Shakespeare from {chars.SHAKESPEARE_URL}", chars.SHAKESPEARE_URL
    return chars.shakespeare_text(None), source, path


def load_text(input_path: str | None, data_dir: str) -> Text:
    """The lecture's text (find_text) as character tokens, split 90/10."""
    text, source, _ = find_text(input_path, data_dir)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    tok = CharTokenizer.from_text(text)
    parts = chars.split_text(text)
    splits = {s: np.array(tok.encode(p), np.uint16) for s, p in zip(data.SPLITS, parts)}
    return Text(splits, tok.vocab_size, source, digest == chars.SHAKESPEARE_SHA256)


def _log(line: str) -> None:
    print(line, flush=True)


@dataclasses.dataclass
class StageResult:
    name: str
    params: int
    val_loss: float
    seconds: float
    evals: list  # (step, train loss, val loss) at every evaluation
    train_losses: np.ndarray  # the loss of every training step


def estimate_loss(eval_fn, params, splits: dict, cfg: TrainConfig, step: int) -> dict:
    """Mean loss over eval_iters fresh random batches of each split, as the lecture's
    estimate_loss (the batches are a pure function of (seed, split, step))."""
    shape = (cfg.eval_iters, cfg.batch_size)
    return {
        s: float(
            eval_fn(params, data.get_batch(d, cfg.block_size, shape, cfg.seed, s, step, stream=1))
        )
        for s, d in splits.items()
    }


def train_stage(
    stage: Stage, splits: dict, vocab_size: int, overrides: dict | None = None, log=_log
) -> StageResult:
    """Train one stage from scratch with its settings; evaluates at every eval_interval
    and after the last step."""
    t0 = time.perf_counter()
    cfg = stage_config(stage, overrides)
    model, params = init_model(stage, cfg, vocab_size)
    tx = lecture_optimizer(cfg)
    state = train.init_state(params, tx)
    step_fn = jax.jit(
        functools.partial(train.train_steps, model=model, tx=tx, cfg=cfg), donate_argnums=0
    )
    eval_fn = jax.jit(functools.partial(train.eval_loss, model=model))
    evals, train_losses, it = [], [], 0
    while True:
        if it % cfg.eval_interval == 0 or it == cfg.max_iters:
            losses = estimate_loss(eval_fn, state.params, splits, cfg, it)
            evals.append((it, losses["train"], losses["val"]))
            train_loss, val_loss = losses["train"], losses["val"]
            log(f"{stage.name}: step {it}: train loss {train_loss:.4f}, val loss {val_loss:.4f}")
        if it == cfg.max_iters:
            break
        k = min(cfg.eval_interval - it % cfg.eval_interval, cfg.max_iters - it)
        windows = np.stack(
            [
                data.get_batch(
                    splits["train"], cfg.block_size, (1, cfg.batch_size), cfg.seed, "train", s
                )
                for s in range(it, it + k)
            ]
        )  # (k, 1, B, T + 1): k steps of one micro-batch each
        state, metrics = step_fn(state, windows)
        train_losses.append(np.asarray(metrics["loss"]))
        it += k
    return StageResult(
        name=stage.name,
        params=sum(p.size for p in jax.tree.leaves(state.params)),
        val_loss=evals[-1][2],
        seconds=time.perf_counter() - t0,
        evals=evals,
        train_losses=np.concatenate(train_losses) if train_losses else np.zeros(0),
    )


MARK = " *"  # after the name of a stage run with settings other than the lecture's


def changed_settings(stage: Stage, overrides: dict | None) -> dict:
    """The overrides that differ from the stage's lecture settings."""
    lecture_cfg = stage_config(stage)
    return {k: v for k, v in (overrides or {}).items() if getattr(lecture_cfg, k) != v}


def format_table(
    results: dict[int, StageResult], overrides: dict | None = None, text: Text | None = None
) -> str:
    """The markdown table of every stage; stages not run show their size and reference.
    Above it: the text used, and the settings of rows marked with MARK."""
    lines = []
    if text is not None:
        n = sum(len(s) for s in text.splits.values())
        line = f"text: {text.source} ({n:,} characters, vocab {text.vocab_size})"
        if not text.tiny_shakespeare:
            line += "; not tiny Shakespeare: the reference column is tiny Shakespeare's"
        lines.append(line)
    marked = {i for i in results if changed_settings(STAGES[i - 1], overrides)}
    if marked:
        settings = ", ".join(f"{k}={v}" for k, v in overrides.items())
        lines.append(f"{MARK.strip()} run with {settings}, not the lecture's settings")
    lines += ["| stage | params | val loss | reference | seconds |", "|---|---:|---:|---:|---:|"]
    for i, stage in enumerate(STAGES, start=1):
        r = results.get(i)
        params = r.params if r else count_params(stage)
        loss, secs = (f"{r.val_loss:.4f}", f"{r.seconds:.0f}") if r else ("-", "-")
        name = stage.name + (MARK if i in marked else "")
        lines.append(f"| {name} | {params:,} | {loss} | {stage.reference} | {secs} |")
    return "\n".join(lines)


def run_lecture(
    stages: list[int], input_path: str | None, data_dir: str, overrides: dict, log=_log
) -> tuple[dict[int, StageResult], Text]:
    text = load_text(input_path, data_dir)
    log(f"text: {text.source}")
    for s in stages:
        block = stage_config(STAGES[s - 1], overrides).block_size
        if min(len(d) for d in text.splits.values()) <= block:
            raise data.DataError(f"the text is too short for stage {s}'s block_size {block}")
    results = {
        s: train_stage(STAGES[s - 1], text.splits, text.vocab_size, overrides, log) for s in stages
    }
    return results, text
