"""Configuration: frozen dataclasses for the model and the training run.

Field names follow nanoGPT's model.py (GPTConfig) and train.py (the knobs at the top of
the file), so a nanoGPT config reads the same here. An experiment file in
`experiments/` is a Python module with a module docstring and a dict named `config`
holding overrides; the command line adds `--key=value` overrides on top. Both go through
`apply_overrides`, which checks every key and value type and names the closest valid key
on a typo.
"""

import dataclasses
import difflib
import importlib.util
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
    n_kv_head: int = 0  # key/value heads (grouped-query attention); 0: n_head
    tie_embeddings: bool = True  # the lm head is wte (nanoGPT, GPT-2); False: its own kernel
    logit_softcap: float = 0.0  # logits = c * tanh(logits / c); 0: off
    zero_init_proj: bool = False  # zero-initialise c_proj (and an untied lm head)

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ConfigError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.attention not in ("auto", "xla", "cudnn", "einsum"):
            raise ConfigError(
                f"attention={self.attention!r}: choose one of auto, xla, cudnn, einsum"
            )
        for key in ("dtype", "param_dtype"):
            if getattr(self, key) not in ("float32", "bfloat16", "float16"):
                raise ConfigError(f"{key}={getattr(self, key)!r}: use float32, bfloat16 or float16")
        for key, choices in CHOICES.items():
            if getattr(self, key) not in choices:
                raise ConfigError(
                    f"{key}={getattr(self, key)!r}: choose one of {', '.join(choices)}"
                )
        if self.pos_encoding == "rope" and (self.n_embd // self.n_head) % 2:
            raise ConfigError(f"pos_encoding=rope needs an even head size, not {self.head_size}")
        if self.n_kv_head < 0 or self.n_head % self.kv_heads:
            raise ConfigError(
                f"n_kv_head={self.n_kv_head} must divide n_head={self.n_head} (0: n_head)"
            )
        for key in ("rope_theta", "norm_eps"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"{key}={getattr(self, key)} is out of range: must be > 0")
        for key in ("mlp_hidden", "logit_softcap"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key}={getattr(self, key)} is out of range: must be >= 0")

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def hidden_size(self) -> int:
        return self.mlp_hidden or 4 * self.n_embd


CHOICES = {
    "pos_encoding": ("learned", "rope"),
    "norm": ("layernorm", "rmsnorm"),
    "mlp": ("gelu", "gelu_tanh", "relu2", "swiglu"),
}
# the keys of GPTConfig a run sets through TrainConfig (the rest: vocab_size, param_dtype)
MODEL_KEYS = (
    "block_size", "n_layer", "n_head", "n_embd", "dropout", "bias", "dtype", "attention",
    "remat", "scan_layers", "pos_encoding", "rope_theta", "norm", "norm_eps", "norm_scale",
    "mlp", "mlp_hidden", "qk_norm", "n_kv_head", "tie_embeddings", "logit_softcap",
    "zero_init_proj",
)  # fmt: skip
# the keys that define the function a model computes (not how it is computed)
COMPUTE_KEYS = ("dropout", "dtype", "attention", "remat", "scan_layers")
ARCH_KEYS = tuple(k for k in MODEL_KEYS if k not in COMPUTE_KEYS)


@dataclass(frozen=True)
class TrainConfig:
    # I/O
    out_dir: str = "out"
    eval_interval: int = 2000
    log_interval: int = 1
    eval_iters: int = 200
    eval_only: bool = False
    always_save_checkpoint: bool = True
    init_from: str = "scratch"  # scratch | resume | gpt2* | path to a HF GPT-2 directory
    keep_checkpoints: int = 2  # complete checkpoints kept in out_dir
    max_nonfinite_steps: int = 5  # stop after this many NaN/inf updates in a row (skipped)
    tensorboard_log: bool = True  # event files in out_dir/tensorboard
    # wandb logging
    wandb_log: bool = False
    wandb_project: str = "owt"
    wandb_run_name: str = "gpt2"
    # data
    dataset: str = "openwebtext"
    data_dir: str = "data"
    gradient_accumulation_steps: int = 1
    batch_size: int = 12  # micro-batch size; tokens per iter = accum * batch * block
    block_size: int = 1024
    # model
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = False
    vocab_size: int = 0  # 0: the dataset's; nanoGPT pads GPT-2's 50257 to 50304 for speed
    # model: after nanoGPT (GPTConfig's options; the defaults are nanoGPT's model)
    pos_encoding: str = "learned"  # learned | rope
    rope_theta: float = 10000.0  # rope: base of the rotary frequencies
    norm: str = "layernorm"  # layernorm | rmsnorm
    norm_eps: float = 1e-5  # epsilon of every norm
    norm_scale: bool = True  # a learnable scale (gain) in every norm
    mlp: str = "gelu"  # gelu | gelu_tanh | relu2 | swiglu
    mlp_hidden: int = 0  # hidden units of the MLP; 0: 4 * n_embd
    qk_norm: bool = False  # RMSNorm on each head's queries and keys
    n_kv_head: int = 0  # key/value heads (grouped-query attention); 0: n_head
    tie_embeddings: bool = True  # the lm head is wte; False: an lm head of its own
    logit_softcap: float = 0.0  # logits = c * tanh(logits / c); 0: off
    zero_init_proj: bool = False  # zero-initialise c_proj (and an untied lm head)
    # adamw optimizer
    learning_rate: float = 6e-4
    max_iters: int = 600000
    weight_decay: float = 1e-1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 disables clipping
    # learning rate decay
    decay_lr: bool = True
    warmup_iters: int = 2000
    lr_decay_iters: int = 600000
    min_lr: float = 6e-5
    lr_schedule: str = "cosine"  # cosine (nanoGPT's) | wsd: warmup, stable, linear decay to min_lr
    cooldown_frac: float = 0.4  # wsd: the decay spans the last cooldown_frac of lr_decay_iters
    # optimizer (muon: Muon on the blocks' weight matrices, AdamW above on the rest)
    optimizer: str = "adamw"  # adamw | muon
    muon_lr: float = 0.02  # Muon's base lr, scheduled as learning_rate is (x muon_lr / lr)
    muon_momentum: float = 0.95  # Muon's momentum (an average of the gradients)
    muon_nesterov: bool = True  # Nesterov momentum (optax's, bias-corrected; see muon.py)
    muon_weight_decay: float = 0.0  # decoupled, times the scheduled muon lr (torch's Muon)
    muon_ns_steps: int = 5  # Newton-Schulz iterations of the orthogonalisation
    muon_lr_scale: str = "original"  # original | match_rms_adamw: torch's adjust_lr_fn
    # system
    seed: int = 1337
    dtype: str = "float32"  # compute dtype: float32 | bfloat16 | float16
    attention: str = "auto"
    remat: bool = False
    scan_layers: bool = False
    steps_per_call: int = 1  # optimizer steps per compiled call (lax.scan); divides intervals
    # device mesh: -1 takes all remaining devices (see sharding.py)
    mesh_data: int = -1
    mesh_fsdp: int = 1
    mesh_tensor: int = 1
    # multi-host (jax.distributed); auto-detected on TPU VMs and SLURM
    coordinator_address: str = ""
    num_processes: int = 0
    process_id: int = -1

    def __post_init__(self):
        positive = ("eval_interval", "log_interval", "eval_iters", "batch_size", "block_size")
        positive += ("gradient_accumulation_steps", "steps_per_call", "max_nonfinite_steps")
        for key in positive:
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}={getattr(self, key)} must be >= 1")
        if self.max_iters < 0:
            raise ConfigError(f"max_iters={self.max_iters} must be >= 0")
        choices = {
            "lr_schedule": ("cosine", "wsd"),
            "optimizer": ("adamw", "muon"),
            "muon_lr_scale": ("original", "match_rms_adamw"),
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(
                    f"{key}={getattr(self, key)!r}: choose one of {', '.join(allowed)}"
                )
        if not 0.0 <= self.cooldown_frac <= 1.0:
            raise ConfigError(f"cooldown_frac={self.cooldown_frac} must be in [0, 1]")
        for key in ("muon_lr", "muon_weight_decay"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key}={getattr(self, key)} must be >= 0")
        if not 0.0 <= self.muon_momentum < 1.0:
            raise ConfigError(f"muon_momentum={self.muon_momentum} must be in [0, 1)")
        if self.muon_ns_steps < 1:
            raise ConfigError(f"muon_ns_steps={self.muon_ns_steps} must be >= 1")
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

    def model_config(self, vocab_size: int) -> GPTConfig:
        """The model this run trains, for a dataset of `vocab_size` tokens."""
        return GPTConfig(vocab_size=vocab_size, **{k: getattr(self, k) for k in MODEL_KEYS})


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
