"""Train state, optimizer and the compiled train/eval steps (nanoGPT's train.py math).

The optimizer is nanoGPT's AdamW, or with optimizer=muon Muon on the blocks' kernels and
that AdamW on the rest (muon.py); the schedule is nanoGPT's, or warmup-stable-decay.

The state is a plain pytree (step, params, opt_state). `train_step` is a pure function
of (state, batch): gradient accumulation over micro-batches runs inside it with
lax.scan, and dropout keys are derived from (seed, step, micro-step), so the update at
step s depends on nothing but the state and step s's batch. `make_train_step` jits it
over the device mesh with the state donated; with steps_per_call > 1 several optimizer
steps run in one compiled call, which saves per-call overhead on small models.
"""

import functools
import math

import flax
import jax
import jax.numpy as jnp
import optax

from jaxgpt import muon, sharding
from jaxgpt.config import GPTConfig, TrainConfig
from jaxgpt.model import GPT, abstract_params, cross_entropy, init_params, unbox


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # number of optimizer updates applied so far
    params: dict
    opt_state: optax.OptState


def get_lr(it, cfg: TrainConfig):
    """The learning rate of step `it`: AdamW's, and Muon's times muon_lr / learning_rate.

    lr_schedule=cosine is nanoGPT's: linear warmup, cosine decay to min_lr at
    lr_decay_iters, then min_lr. wsd (warmup-stable-decay, modded-nanogpt's): the same
    warmup, learning_rate until the last cooldown_frac of lr_decay_iters, a linear decay
    to min_lr at lr_decay_iters, then min_lr. Works on Python numbers and on traced step
    counters.
    """
    if not cfg.decay_lr:
        return cfg.learning_rate + 0.0 * it
    warmup = cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if cfg.lr_schedule == "wsd":
        start = cfg.lr_decay_iters * (1.0 - cfg.cooldown_frac)
        ratio = jnp.clip((it - start) / max(cfg.lr_decay_iters - start, 1), 0.0, 1.0)
        decayed = cfg.learning_rate - ratio * (cfg.learning_rate - cfg.min_lr)
    else:
        span = max(cfg.lr_decay_iters - cfg.warmup_iters, 1)
        decay_ratio = jnp.clip((it - cfg.warmup_iters) / span, 0.0, 1.0)
        coeff = 0.5 * (1.0 + jnp.cos(math.pi * decay_ratio))
        decayed = cfg.min_lr + coeff * (cfg.learning_rate - cfg.min_lr)
    lr = jnp.where(it < cfg.warmup_iters, warmup, decayed)
    return jnp.where(it > cfg.lr_decay_iters, cfg.min_lr, lr)


def decay_mask(params: dict) -> dict:
    """Weight decay on weight matrices and embeddings (nanoGPT: every >= 2-D tensor), not on
    biases and LayerNorm parameters. Decided by name because attention kernels and biases
    here have extra head axes."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: path[-1].key in ("kernel", "embedding"), params
    )


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """nanoGPT's AdamW, or with optimizer=muon Muon on the blocks' kernels and this AdamW on
    the rest (muon.py); clipping by the global norm of the whole gradient first."""
    tx = optax.adamw(
        learning_rate=functools.partial(get_lr, cfg=cfg),
        b1=cfg.beta1,
        b2=cfg.beta2,
        eps=1e-8,
        weight_decay=cfg.weight_decay,
        mask=decay_mask,
    )
    if cfg.optimizer == "muon":
        muon_tx = muon.muon(
            learning_rate=lambda it: get_lr(it, cfg) * (cfg.muon_lr / cfg.learning_rate),
            momentum=cfg.muon_momentum,
            nesterov=cfg.muon_nesterov,
            weight_decay=cfg.muon_weight_decay,
            ns_steps=cfg.muon_ns_steps,
            lr_scale=cfg.muon_lr_scale,
        )
        tx = muon.muon_adamw(muon_tx, tx)
    if cfg.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), tx)
    return tx


def loss_fn(params, model: GPT, x, y, dropout_key, deterministic: bool):
    logits = model.apply(
        {"params": params}, x, deterministic=deterministic, rngs={"dropout": dropout_key}
    )  # (B, T, V)
    return cross_entropy(logits, y)


def train_step(state: TrainState, windows, *, model: GPT, tx, cfg: TrainConfig):
    """One optimizer update from token windows of shape (accum, B, T + 1).

    Returns the new state and metrics: mean loss over the micro-batches, the global
    gradient norm before clipping, the learning rate used, and `nonfinite`: True when the
    loss or gradient norm was NaN/inf and the update was skipped (the state is returned
    unchanged, step included, so state.step keeps counting the updates applied).
    """
    x, y = windows[..., :-1], windows[..., 1:]  # (accum, B, T) each
    step_key = jax.random.fold_in(jax.random.key(cfg.seed), state.step)
    deterministic = model.config.dropout == 0.0
    grad_fn = jax.value_and_grad(loss_fn)

    def micro_step(grads, micro):
        i, xb, yb = micro
        key = jax.random.fold_in(step_key, i)
        loss, g = grad_fn(state.params, model, xb, yb, key, deterministic)
        return jax.tree.map(jnp.add, grads, g), loss

    accum = x.shape[0]
    if accum == 1:
        loss, grads = grad_fn(state.params, model, x[0], y[0], step_key, deterministic)
    else:
        zeros = jax.tree.map(jnp.zeros_like, state.params)
        grads, losses = jax.lax.scan(micro_step, zeros, (jnp.arange(accum), x, y))
        grads = jax.tree.map(lambda g: g / accum, grads)
        loss = losses.mean()
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    # a non-finite loss or gradient leaves the state as it was: the update is skipped
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new = TrainState(step=state.step + 1, params=params, opt_state=opt_state)
    new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
    metrics = {
        "loss": loss,
        "grad_norm": grad_norm,
        "lr": get_lr(state.step, cfg),
        "nonfinite": ~finite,
    }
    return new, metrics


def train_steps(state: TrainState, windows, **kw):
    """k optimizer updates in one call: windows of shape (k, accum, B, T + 1)."""
    return jax.lax.scan(lambda s, w: train_step(s, w, **kw), state, windows)


def eval_loss(params, windows, *, model: GPT):
    """Mean loss over n batches without dropout: windows of shape (n, B, T + 1)."""

    def one(w):  # (B, T + 1)
        return loss_fn(params, model, w[:, :-1], w[:, 1:], jax.random.key(0), True)

    return jax.lax.map(one, windows).mean()


def state_shardings(model_cfg: GPTConfig, tx, mesh) -> TrainState:
    """NamedShardings of every leaf of the train state, from the logical axis rules."""
    boxed = abstract_params(model_cfg)
    param_sh = sharding.logical_sharding(boxed, mesh)
    abstract_opt = jax.eval_shape(tx.init, unbox(boxed))
    # a multi_transform (optimizer=muon) keeps each group's state over the whole tree,
    # the other group's leaves masked out: those stay masked
    masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731
    opt_sh = optax.tree_map_params(
        tx,
        lambda x, s: x if masked(x) else s,
        abstract_opt,
        param_sh,
        transform_non_params=lambda _: sharding.replicated(mesh),
        is_leaf=masked,
    )
    return TrainState(step=sharding.replicated(mesh), params=param_sh, opt_state=opt_sh)


# The initialiser runs once: on CPU, LLVM's -O1 halves its compile time (GPT-2 124M: 7.0 ->
# 4.3 s; the CPU config: 3.2 -> 1.6 s) and gives bit-identical parameters
INIT_COMPILER_OPTIONS = {"cpu": {"xla_backend_optimization_level": 1}}


def init_state(params: dict, tx) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def create_state(model_cfg: GPTConfig, tx, mesh, key: jax.Array) -> TrainState:
    """A freshly initialised state, created already sharded (under jit, out_shardings)."""

    def init(key):
        return init_state(init_params(model_cfg, key), tx)

    with sharding.activate(mesh):
        lowered = jax.jit(init, out_shardings=state_shardings(model_cfg, tx, mesh)).lower(key)
    return lowered.compile(compiler_options=INIT_COMPILER_OPTIONS.get(jax.default_backend()))(key)


def state_from_params(params: dict, model_cfg: GPTConfig, tx, mesh) -> TrainState:
    """A fresh optimizer state around given parameters (e.g. pretrained GPT-2), sharded."""
    shardings = state_shardings(model_cfg, tx, mesh)
    params = jax.device_put(params, shardings.params)
    with sharding.activate(mesh):
        return jax.jit(functools.partial(init_state, tx=tx), out_shardings=shardings)(params)


def abstract_state(model_cfg: GPTConfig, tx, mesh) -> TrainState:
    """The train state's shapes, dtypes and shardings at no cost (eval_shape): what a
    checkpoint restores into and what the steps compile for."""
    shapes = jax.eval_shape(lambda: init_state(unbox(abstract_params(model_cfg)), tx))
    return jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        shapes,
        state_shardings(model_cfg, tx, mesh),
    )


def _ahead(jitted, mesh, *abstract_args):
    """jitted's executable for these abstract arguments, compiled now: a loop that starts
    it in a thread compiles while the state is created, restored or evaluated."""
    with sharding.activate(mesh):
        return jitted.lower(*abstract_args).compile()


def make_train_step(model_cfg: GPTConfig, cfg: TrainConfig, tx, mesh, ahead: bool = False):
    """The jitted step: (state, windows) -> (state, metrics), state donated.

    windows have shape (steps_per_call, accum, B, T + 1) when cfg.steps_per_call > 1,
    else (accum, B, T + 1); metrics then carry a leading steps_per_call axis. ahead:
    compile now for the run's shapes rather than at the first call.
    """
    kw = dict(model=GPT(model_cfg), tx=tx, cfg=cfg)
    fn = functools.partial(train_steps if cfg.steps_per_call > 1 else train_step, **kw)
    state_sh = state_shardings(model_cfg, tx, mesh)
    lead = 2 if cfg.steps_per_call > 1 else 1
    batch_sh = sharding.batch_sharding(mesh, lead + 2, batch_dim=lead)
    jitted = jax.jit(
        fn,
        in_shardings=(state_sh, batch_sh),
        out_shardings=(state_sh, sharding.replicated(mesh)),
        donate_argnums=0,
    )
    if ahead:
        shape = (cfg.steps_per_call,) * (lead - 1) + (cfg.gradient_accumulation_steps,)
        shape += (cfg.batch_size, cfg.block_size + 1)
        batch = jax.ShapeDtypeStruct(shape, jnp.int32, sharding=batch_sh)
        return _ahead(jitted, mesh, abstract_state(model_cfg, tx, mesh), batch)

    def step(state, batch):
        with sharding.activate(mesh):
            return jitted(state, batch)

    return step


def make_eval_step(model_cfg: GPTConfig, tx, mesh, ahead: tuple[int, int] | None = None):
    """The jitted mean loss over batches: (params, windows (n, B, T + 1)) -> scalar.
    ahead=(n, B): compile now for those windows rather than at the first call."""
    params_sh = state_shardings(model_cfg, tx, mesh).params
    windows_sh = sharding.batch_sharding(mesh, 3, batch_dim=1)
    jitted = jax.jit(
        functools.partial(eval_loss, model=GPT(model_cfg)),
        in_shardings=(params_sh, windows_sh),
        out_shardings=sharding.replicated(mesh),
    )
    if ahead:
        windows = jax.ShapeDtypeStruct(
            (*ahead, model_cfg.block_size + 1), jnp.int32, sharding=windows_sh
        )
        return _ahead(jitted, mesh, abstract_state(model_cfg, tx, mesh).params, windows)

    def step(params, windows):
        with sharding.activate(mesh):
            return jitted(params, windows)

    return step
