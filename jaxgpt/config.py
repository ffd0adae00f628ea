"""Configuration: frozen dataclasses for the model and the training run.

Field names follow nanoGPT's model.py (GPTConfig) and train.py (the knobs at the top of
the file), so a nanoGPT config reads the same here. An experiment file in
`experiments/` is a Python module with a module docstring and a dict named `config`
holding overrides; the command line adds `--key=value` overrides on top. Both go through
`apply_overrides`, which checks every key and value type and names the closest valid key
on a typo. Every value is checked when a config is built: the ranges and choices of
RANGES and CHOICES (one table, which `jaxgpt train --help` prints too, with the comment
beside each field as its description) and the checks that relate keys, each failing
as one ConfigError line that names the key, the value and what is allowed.
"""

import dataclasses
import difflib
import functools
import importlib.util
import math
import numbers
import typing
from dataclasses import dataclass
from pathlib import Path


class ConfigError(ValueError):
    """A user error in a config file or override; the CLI prints it as one line, exit 2."""


@dataclass(frozen=True)
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64, as nanoGPT
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # True: bias in Linears and LayerNorms, like GPT-2
    dtype: str = "float32"  # compute dtype; parameters are stored in param_dtype
    param_dtype: str = "float32"
    attention: str = "auto"  # auto | xla | cudnn | einsum, see ops.causal_attention
    remat: bool = False  # rematerialise each block's activations in the backward pass
    scan_layers: bool = False  # one nn.scan over the blocks: faster compiles for deep models
    # after nanoGPT (the defaults are nanoGPT's model; see model.py)
    pos_encoding: str = "learned"  # learned (wpe, GPT-2) | rope (rotary, on q and k)
    rope_theta: float = 10000.0  # rope: base of the rotary frequencies
    norm: str = "layernorm"  # layernorm | rmsnorm
    norm_eps: float = 1e-5  # epsilon of every norm
    norm_scale: bool = True  # a learnable scale (gain) in every norm
    mlp: str = "gelu"  # gelu (exact) | gelu_tanh (GPT-2's) | relu2 | swiglu (Llama's)
    mlp_hidden: int = 0  # hidden units of the MLP; 0: 4 * n_embd
    qk_norm: bool = False  # RMSNorm on each head's queries and keys
    qk_norm_scale: bool = True  # qk_norm's gains (Qwen3, OLMo 2); False: none (modded-nanogpt)
    n_kv_head: int = 0  # key/value heads (grouped-query attention); 0: n_head
    tie_embeddings: bool = True  # the lm head is wte (nanoGPT, GPT-2); False: its own kernel
    logit_softcap: float = 0.0  # logits = c * tanh(logits / c); 0: off
    zero_init_proj: bool = False  # zero-initialise c_proj (and an untied lm head)

    def __post_init__(self):
        check_fields(self, {**RANGES, "vocab_size": "[1, inf)"}, CHOICES)
        if self.n_embd % self.n_head:
            raise ConfigError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.pos_encoding == "rope" and self.head_size % 2:
            raise ConfigError(f"pos_encoding=rope needs an even head size, not {self.head_size}")
        if self.n_head % self.kv_heads:
            raise ConfigError(
                f"n_kv_head={self.n_kv_head} must divide n_head={self.n_head} (0: n_head)"
            )

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def hidden_size(self) -> int:
        return self.mlp_hidden or 4 * self.n_embd

    @property
    def qk_gain(self) -> bool:
        """Whether q_norm and k_norm have a learnable scale."""
        return self.norm_scale and self.qk_norm_scale


# the keys of GPTConfig a run sets through TrainConfig (the rest: vocab_size, param_dtype)
MODEL_KEYS = (
    "block_size", "n_layer", "n_head", "n_embd", "dropout", "bias", "dtype", "attention",
    "remat", "scan_layers", "pos_encoding", "rope_theta", "norm", "norm_eps", "norm_scale",
    "mlp", "mlp_hidden", "qk_norm", "qk_norm_scale", "n_kv_head", "tie_embeddings",
    "logit_softcap", "zero_init_proj",
)  # fmt: skip
# the keys that define the function a model computes (not how it is computed)
COMPUTE_KEYS = ("dropout", "dtype", "attention", "remat", "scan_layers")
ARCH_KEYS = tuple(k for k in MODEL_KEYS if k not in COMPUTE_KEYS)


@dataclass(frozen=True)
class TrainConfig:
    # I/O
    out_dir: str = "out"  # checkpoints, metrics.jsonl and tensorboard events go here
    eval_interval: int = 2000  # evaluate both splits (and maybe save) every this many iters
    log_interval: int = 1  # print the train loss every this many iters
    eval_iters: int = 200  # batches per split in each evaluation
    eval_only: bool = False  # evaluate once and exit (nanoGPT's eval_only)
    always_save_checkpoint: bool = True  # save at every eval, not only when val improves
    init_from: str = "scratch"  # scratch | resume | gpt2* | path to a HF GPT-2 directory
    keep_checkpoints: int = 2  # complete checkpoints kept in out_dir
    max_nonfinite_steps: int = 5  # stop after this many NaN/inf updates in a row (skipped)
    tensorboard_log: bool = True  # event files in out_dir/tensorboard
    # wandb logging
    wandb_log: bool = False  # log to Weights & Biases (needs the wandb package)
    wandb_project: str = "owt"  # wandb project
    wandb_run_name: str = "gpt2"  # wandb run name
    # data
    dataset: str = "openwebtext"  # folder under data_dir (train.bin, val.bin, meta.json)
    data_dir: str = "data"  # where `jaxgpt prepare` writes datasets
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step
    batch_size: int = 12  # micro-batch size; tokens per iter = accum * batch * block
    block_size: int = 1024  # context length in tokens
    # model
    n_layer: int = 12  # transformer blocks
    n_head: int = 12  # attention heads (query heads)
    n_embd: int = 768  # embedding width; a multiple of n_head
    dropout: float = 0.0  # for pretraining 0 is good, for finetuning try 0.1+
    bias: bool = False  # bias inside LayerNorm and Linear layers
    vocab_size: int = 0  # 0: the dataset's; nanoGPT pads GPT-2's 50257 to 50304 for speed
    # model: after nanoGPT (GPTConfig's options; the defaults are nanoGPT's model)
    pos_encoding: str = "learned"  # learned position embeddings (wpe) or rotary (rope)
    rope_theta: float = 10000.0  # rope: base of the rotary frequencies
    norm: str = "layernorm"  # LayerNorm (GPT-2) or RMSNorm (Llama)
    norm_eps: float = 1e-5  # epsilon of every norm
    norm_scale: bool = True  # a learnable scale (gain) in every norm
    mlp: str = "gelu"  # MLP activation; swiglu is Llama's gated MLP
    mlp_hidden: int = 0  # hidden units of the MLP; 0: 4 * n_embd
    qk_norm: bool = False  # RMSNorm on each head's queries and keys
    qk_norm_scale: bool = True  # qk_norm's gains (Qwen3, OLMo 2); False: none (modded-nanogpt)
    n_kv_head: int = 0  # key/value heads (grouped-query attention); 0: n_head
    tie_embeddings: bool = True  # the lm head is wte; False: an lm head of its own
    logit_softcap: float = 0.0  # logits = c * tanh(logits / c); 0: off
    zero_init_proj: bool = False  # zero-initialise c_proj (and an untied lm head)
    # adamw optimizer
    learning_rate: float = 6e-4  # max learning rate
    max_iters: int = 600000  # total number of training iterations
    weight_decay: float = 1e-1  # AdamW's decoupled weight decay (matrices and embeddings)
    beta1: float = 0.9  # AdamW's beta1
    beta2: float = 0.95  # AdamW's beta2
    grad_clip: float = 1.0  # clip gradients at this global norm; 0 disables clipping
    # learning rate decay
    decay_lr: bool = True  # whether to decay the learning rate
    warmup_iters: int = 2000  # how many steps to warm up for
    lr_decay_iters: int = 600000  # should be ~= max_iters per Chinchilla
    min_lr: float = 6e-5  # minimum learning rate, should be ~= learning_rate/10
    lr_schedule: str = "cosine"  # nanoGPT's cosine, or wsd: warmup, stable, linear decay
    cooldown_frac: float = 0.4  # wsd: the decay spans the last cooldown_frac of lr_decay_iters
    # optimizer (muon: Muon on the blocks' weight matrices, AdamW above on the rest)
    optimizer: str = "adamw"  # nanoGPT's AdamW, or Muon on the blocks' matrices
    muon_lr: float = 0.02  # Muon's base lr, scheduled as learning_rate is (x muon_lr / lr)
    muon_momentum: float = 0.95  # Muon's momentum (an average of the gradients)
    muon_nesterov: bool = True  # Nesterov momentum (optax's, bias-corrected; see muon.py)
    muon_weight_decay: float = 0.0  # decoupled, times the scheduled muon lr (torch's Muon)
    muon_ns_steps: int = 5  # Newton-Schulz iterations of the orthogonalisation
    muon_lr_scale: str = "original"  # torch's adjust_lr_fn
    # system
    seed: int = 1337  # seed of the initialisation, dropout and the batches
    dtype: str = "float32"  # compute dtype; parameters stay float32
    attention: str = "auto"  # attention kernel, see ops.causal_attention
    remat: bool = False  # rematerialise each block's activations in the backward pass
    scan_layers: bool = False  # one nn.scan over the blocks: faster compiles for deep models
    steps_per_call: int = 1  # optimizer steps per compiled call (lax.scan); divides intervals
    # device mesh: -1 takes all remaining devices (see sharding.py)
    mesh_data: int = -1  # data-parallel devices
    mesh_fsdp: int = 1  # FSDP devices: parameters and Adam moments sharded
    mesh_tensor: int = 1  # tensor-parallel devices: heads, MLP units and vocabulary split
    # multi-host (jax.distributed); auto-detected on TPU VMs and SLURM
    coordinator_address: str = ""  # host:port of process 0; empty: auto-detect or one host
    num_processes: int = 0  # processes in the run (with coordinator_address)
    process_id: int = -1  # this process's index (with coordinator_address)

    def __post_init__(self):
        check_fields(self, RANGES, CHOICES)
        for key in NOT_EMPTY:
            if not getattr(self, key):
                raise ConfigError(f"{key} must not be empty")
        if self.decay_lr and self.warmup_iters > self.lr_decay_iters:
            raise ConfigError(
                f"warmup_iters={self.warmup_iters} must be <= lr_decay_iters="
                f"{self.lr_decay_iters} (or set --decay_lr=False)"
            )
        if self.optimizer == "muon" and self.learning_rate <= 0:
            raise ConfigError(
                f"learning_rate={self.learning_rate} must be > 0 with optimizer=muon "
                "(Muon's lr is scheduled as learning_rate's, times muon_lr / learning_rate)"
            )
        for key in ("eval_interval", "log_interval", "max_iters"):
            if getattr(self, key) % self.steps_per_call:
                raise ConfigError(
                    f"{key}={getattr(self, key)} must be a multiple of "
                    f"steps_per_call={self.steps_per_call}"
                )
        mesh = (self.mesh_data, self.mesh_fsdp, self.mesh_tensor)
        if mesh.count(-1) > 1:
            raise ConfigError(
                f"mesh {mesh}: at most one of mesh_data, mesh_fsdp, mesh_tensor may be -1"
            )
        # coordinator_address with num_processes and process_id: sharding.init_distributed
        # checks them, first thing in loop.setup (a config is often built before its
        # process_id is known, one per process)
        self.model_config(self.vocab_size or 1)  # the model's own checks (n_embd % n_head, ...)

    def model_config(self, vocab_size: int) -> GPTConfig:
        """The model this run trains, for a dataset of `vocab_size` tokens."""
        return GPTConfig(vocab_size=vocab_size, **{k: getattr(self, k) for k in MODEL_KEYS})


# The allowed values of every key that has a range or a fixed set of choices, one table
# for the checks (check_fields) and `jaxgpt train --help`. A range is written as an
# interval, "-1 | [1, inf)" also allows -1; every float must be finite. The bool keys and
# the free-text keys (STR_KEYS) take any value of their type.
RANGES = {
    # I/O
    "eval_interval": "[1, inf)", "log_interval": "[1, inf)", "eval_iters": "[1, inf)",
    "keep_checkpoints": "[1, inf)", "max_nonfinite_steps": "[1, inf)",
    # data
    "gradient_accumulation_steps": "[1, inf)", "batch_size": "[1, inf)",
    "block_size": "[1, inf)",
    # model
    "n_layer": "[1, inf)", "n_head": "[1, inf)", "n_embd": "[1, inf)", "dropout": "[0, 1)",
    "vocab_size": "[0, inf)", "rope_theta": "(0, inf)", "norm_eps": "(0, inf)",
    "mlp_hidden": "[0, inf)", "n_kv_head": "[0, inf)", "logit_softcap": "[0, inf)",
    # optimizer (PyTorch's AdamW refuses lr < 0, betas outside [0, 1), weight_decay < 0)
    "learning_rate": "[0, inf)", "max_iters": "[0, inf)", "weight_decay": "[0, inf)",
    "beta1": "[0, 1)", "beta2": "[0, 1)", "grad_clip": "[0, inf)",
    "warmup_iters": "[0, inf)", "lr_decay_iters": "[0, inf)", "min_lr": "[0, inf)",
    "cooldown_frac": "[0, 1]", "muon_lr": "[0, inf)", "muon_momentum": "[0, 1)",
    "muon_weight_decay": "[0, inf)", "muon_ns_steps": "[1, inf)",
    # system (jax.random.key takes a seed < 2**63, numpy's generator one >= 0)
    "seed": "[0, 2**63)", "steps_per_call": "[1, inf)",
    "mesh_data": "-1 | [1, inf)", "mesh_fsdp": "-1 | [1, inf)", "mesh_tensor": "-1 | [1, inf)",
    "num_processes": "[0, inf)", "process_id": "-1 | [0, inf)",
}  # fmt: skip
DTYPES = ("float32", "bfloat16", "float16")
CHOICES = {
    "pos_encoding": ("learned", "rope"),
    "norm": ("layernorm", "rmsnorm"),
    "mlp": ("gelu", "gelu_tanh", "relu2", "swiglu"),
    "dtype": DTYPES,
    "param_dtype": DTYPES,
    "attention": ("auto", "xla", "cudnn", "einsum"),
    "lr_schedule": ("cosine", "wsd"),
    "optimizer": ("adamw", "muon"),
    "muon_lr_scale": ("original", "match_rms_adamw"),
}
NOT_EMPTY = ("out_dir", "data_dir", "dataset", "init_from")  # strings that must be set
STR_KEYS = ("out_dir", "init_from", "wandb_project", "wandb_run_name", "dataset", "data_dir")
STR_KEYS += ("coordinator_address",)


def in_range(value, spec: str) -> bool:
    """Whether a number lies in `spec`: intervals such as "[0, 1)", "(0, inf)" or
    "[0, 2**63)", and single values, joined by "|"."""
    for part in (p.strip() for p in spec.split("|")):
        if part[0] not in "[(":
            if value == _number(part):
                return True
            continue
        lo, hi = (_number(x) for x in part[1:-1].split(","))
        above = value >= lo if part[0] == "[" else value > lo
        below = value <= hi if part[-1] == "]" else value < hi
        if above and below:
            return True
    return False


def _number(text: str) -> float | int:
    text = text.strip()
    return 2 ** int(text[3:]) if text.startswith("2**") else float(text)


def describe_range(spec: str) -> str:
    """ "[0, inf)" -> ">= 0", "(0, inf)" -> "> 0", "-1 | [1, inf)" -> "-1 or >= 1"."""

    def one(part: str) -> str:
        if part[0] not in "[(":
            return part
        lo, hi = (x.strip() for x in part[1:-1].split(","))
        if hi == "inf" and part[-1] == ")":
            return (">= " if part[0] == "[" else "> ") + lo
        return f"in {part}"

    return " or ".join(one(p.strip()) for p in spec.split("|"))


def check_fields(cfg, ranges: dict, choices: dict) -> None:
    """Every field of the dataclass `cfg` of its type, in its range or among its choices."""
    for key, typ in _field_types(type(cfg)).items():
        value = getattr(cfg, key)
        if typ is float and isinstance(value, numbers.Real) and not isinstance(value, bool):
            pass
        elif not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            raise ConfigError(f"{key} expects {typ.__name__}, got {type(value).__name__} {value!r}")
        if key in choices and value not in choices[key]:
            raise ConfigError(f"{key}={value!r}: choose one of {', '.join(choices[key])}")
        if key in ranges and not in_range(value, ranges[key]):
            finite = "" if math.isfinite(value) else "a finite number "
            raise ConfigError(f"{key}={value!r} must be {finite}{describe_range(ranges[key])}")


@functools.cache
def _field_types(cls) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _check_key(cls, key: str) -> type:
    types_ = _field_types(cls)
    if key not in types_:
        close = difflib.get_close_matches(key, list(types_), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown config key {key!r}{hint}")
    return types_[key]


def parse_value(typ: type, key: str, text: str):
    """Parse one command-line value as the field's type: `--max_iters=100`."""
    if typ is bool:
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"{key} expects a bool (True/False), got {text!r}")
    if typ is str:
        return text
    try:
        return typ(text) if typ is float else int(text, 0)
    except ValueError:
        raise ConfigError(f"{key} expects {typ.__name__}, got {text!r}") from None


def _check_value(typ: type, key: str, value):
    ok = isinstance(value, typ) and not (typ is int and isinstance(value, bool))
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not ok:
        raise ConfigError(f"{key} expects {typ.__name__}, got {type(value).__name__} {value!r}")
    return value


def apply_overrides(cfg, overrides: dict):
    """A copy of the frozen dataclass `cfg` with `overrides` (already typed values) applied."""
    checked = {k: _check_value(_check_key(type(cfg), k), k, v) for k, v in overrides.items()}
    return dataclasses.replace(cfg, **checked)


def parse_overrides(cls, args: list[str]) -> dict:
    """`['--key=value', ...]` -> {key: typed value} for the dataclass `cls`."""
    out = {}
    for arg in args:
        if not arg.startswith("--") or "=" not in arg:
            raise ConfigError(f"expected --key=value, got {arg!r}")
        key, text = arg[2:].split("=", 1)
        out[key] = parse_value(_check_key(cls, key), key, text)
    return out


def load_config_file(path: str) -> dict:
    """The `config` dict of an experiment file (a plain Python module)."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file {path} not found")
    spec = importlib.util.spec_from_file_location(f"jaxgpt_experiment_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # the user's file: report any failure as one line
        raise ConfigError(f"config file {path} does not load: {type(e).__name__}: {e}") from None
    config = getattr(module, "config", None)
    if not isinstance(config, dict):
        raise ConfigError(f"config file {path} must define a dict named `config`")
    return config


def load_train_config(config_file: str | None, args: list[str]) -> TrainConfig:
    """TrainConfig defaults <- experiment file <- command-line overrides."""
    cfg = TrainConfig()
    if config_file:
        cfg = apply_overrides(cfg, load_config_file(config_file))
    return apply_overrides(cfg, parse_overrides(TrainConfig, args))


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(cls, d: dict):
    """Rebuild a config saved by `to_dict`, ignoring keys a newer/older version lacks."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})
