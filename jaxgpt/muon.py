"""optimizer=muon: Muon on the blocks' weight matrices, AdamW on everything else.

Muon (Keller Jordan, modded-nanogpt) replaces a weight matrix's update with its momentum
orthogonalised by a Newton-Schulz iteration. jaxgpt uses optax's implementation, the
chain optax.contrib.muon builds for its Muon group:

    scale_by_muon -> scale_by_shape -> add_decayed_weights -> scale_by_learning_rate

per matrix G (gradient), with momentum beta, step t = 1, 2, ...:

    mu_t = beta mu_{t-1} + (1 - beta) G_t
    M_t  = beta mu_t / (1 - beta^(t+1)) + (1 - beta) G_t / (1 - beta^t)   (nesterov)
           mu_t / (1 - beta^t)                                           (else)
    X    = M_t / (||M_t||_F + 1e-8), then ns_steps x: A = X X^T; X = a X + (b A + c A A) X
           with (a, b, c) = (3.4445, -4.7750, 2.0315), in float32, on the wide orientation
    W   -= lr_t (s X + wd W),  s = sqrt(max(1, fan_out / fan_in))   (muon_lr_scale=original)
                               s = 0.2 sqrt(max(fan_in, fan_out))   (match_rms_adamw)

Where torch.optim.Muon (torch 2.13) defines it differently:
- Nesterov: torch has no bias correction, M_t = beta mu_t + (1 - beta) G_t (modded-nanogpt
  the same). optax corrects the two terms by different factors, so the direction differs
  in the first steps (9% at t = 2 on random gradients, beta 0.95: tests/test_muon.py) and
  converges to torch's as beta^t -> 0. Without Nesterov, optax's M_t is torch's times
  1 / (1 - beta^t), which the normalisation removes: the definitions coincide.
- Newton-Schulz in bfloat16 (torch) against float32 here (optax computes in the
  momentum's dtype); the normalisation's eps is clamped (||M||.clamp(min=1e-7)) in torch,
  added (+1e-8) here.
- The lr scale: torch's adjust_lr_fn "original" and "match_rms_adamw" are optax's
  consistent_rms=None and 0.2 (torch reads the (out, in) shape of nn.Linear's weight;
  fan_in/fan_out here come from the dimension numbers below, so they agree).
- Weight decay: both decoupled and multiplied by the unscaled lr, W *= 1 - lr_t wd
  (torch's default wd is 0.1; optax's and jaxgpt's muon_weight_decay 0).

The AdamW group (embeddings, the head, norms, biases) is make_optimizer's AdamW with the
adamw keys. Both groups follow the run's schedule, Muon's scaled by muon_lr / learning_rate.
jaxgpt/interop/torch_ref.py holds a float32 PyTorch version of exactly this definition.
"""

import jax
import optax
from optax.contrib import MuonDimensionNumbers, scale_by_muon

# the shape scaling optax.contrib.muon chains after scale_by_muon (optax >= 0.2.8)
from optax.contrib._muon import scale_by_shape

from jaxgpt.model import stack_layers, unstack_layers

# (input axes, output axes) of a block's kernels, which are laid out (in..., out...):
# c_attn (C, G + 2, n_kv_head, hs) maps C to each of q (G slices), k and v: the axes
# between inputs and outputs are batch axes, so every slice is its own matrix, as
# modded-nanogpt orthogonalises q, k and v apart; c_proj (nh, hs, C) is one nh*hs -> C
# matrix. Any other kernel in a block (mlp c_fc (C, H) or (C, 2, H), c_proj (H, C)) is
# one input axis, one output axis, batch axes between.
IN_OUT_AXES = {("attn", "c_attn"): (1, 2), ("attn", "c_proj"): (2, 1)}


def _name(path) -> str:
    return str(getattr(path, "key", path))


def in_block(path) -> bool:
    """True for parameters of a transformer block: under h_0, h_1, ... or the stacked h."""
    top = _name(path[0])
    return top == "h" or (top.startswith("h_") and top[2:].isdigit())


def is_muon(path) -> bool:
    """Muon's group: every `kernel` inside a block. Embeddings, the head, norms and biases
    (and any other name) go to AdamW."""
    return in_block(path) and _name(path[-1]) == "kernel"


def labels(params) -> dict:
    """'muon' or 'adamw' for every leaf of a parameter tree."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "muon" if is_muon(path) else "adamw", params
    )


def dimension_numbers(path, x) -> MuonDimensionNumbers:
    """How a block kernel is read as matrices: its input (reduction) and output axes; every
    other axis (scan_layers' leading layers axis, q/k/v, SwiGLU's gate/up) is a batch."""
    n_in, n_out = IN_OUT_AXES.get(tuple(_name(p) for p in path[-3:-1]), (1, 1))
    first = 1 if _name(path[0]) == "h" else 0  # scan_layers: (L, ...) stacked layers
    reduction = tuple(range(first, first + n_in))
    output = tuple(range(x.ndim - n_out, x.ndim))
    return MuonDimensionNumbers(reduction, output)


def weight_dimension_numbers(updates):
    """The dimension numbers of Muon's leaves in the (masked) tree Muon's group sees."""
    return jax.tree_util.tree_map_with_path(dimension_numbers, updates)


def _stackable(tree: dict) -> bool:
    """True for a tree with per-layer blocks h_0, h_1, ... of one structure and shapes."""
    layers = [v for k, v in tree.items() if in_block((k,)) and k != "h"]
    shapes = [jax.tree.map(lambda x: x.shape, layer) for layer in layers]
    return len(layers) > 1 and all(s == shapes[0] for s in shapes)


def over_stacked_layers(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """scale_by_muon run on the layers stacked (L, ...) as scan_layers lays them out, its
    state kept in the parameters' layout.

    Why: orthogonalising the L layers' matrices as one vmapped batch is ~0.8x the time of L
    separate Newton-Schulz loops on XLA:CPU (fewer, larger kernels; README, Muon), and the
    state keeps its per-layer layout, so shardings, checkpoints and convert do not change.
    """

    def update(updates, state, params=None):
        if not _stackable(updates):
            return inner.update(updates, state, params)
        stacked = state._replace(mu=stack_layers(state.mu))
        out, new = inner.update(stack_layers(updates), stacked)
        return unstack_layers(out), new._replace(mu=unstack_layers(new.mu))

    return optax.GradientTransformation(inner.init, update)


def muon(
    learning_rate,
    momentum: float,
    nesterov: bool,
    weight_decay: float,
    ns_steps: int,
    lr_scale: str,
) -> optax.GradientTransformation:
    """Muon's group: optax.contrib.muon's Muon chain with jaxgpt's dimension numbers."""
    return optax.chain(
        over_stacked_layers(
            scale_by_muon(
                ns_steps=ns_steps,
                beta=momentum,
                nesterov=nesterov,
                weight_dimension_numbers=weight_dimension_numbers,
            )
        ),
        scale_by_shape(
            weight_dimension_numbers=weight_dimension_numbers,
            consistent_rms=0.2 if lr_scale == "match_rms_adamw" else None,
        ),
        optax.add_decayed_weights(weight_decay),
        optax.scale_by_learning_rate(learning_rate),
    )


def muon_adamw(muon_tx, adamw_tx) -> optax.GradientTransformation:
    """Muon for the blocks' kernels, AdamW for the rest (optax.multi_transform)."""
    return optax.multi_transform({"muon": muon_tx, "adamw": adamw_tx}, labels)
