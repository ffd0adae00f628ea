"""From bigram to GPT: the stages of the "Let's build GPT" lecture, trained and measured.

Each stage of the lecture (karpathy/ng-video-lecture: bigram.py, then v2.py growing step
by step) is a small Flax linen model here, trained with the lecture's settings on tiny
Shakespeare characters, so the validation loss of every step on the way to a GPT can be
reproduced: `jaxgpt lecture` prints one table row per stage.

    1 bigram         a (V, V) table: the current token reads off the next token's logits
    2 single head    token + position embeddings, one causal self-attention head, lm head
    3 multi-head     4 heads of 8 instead of 1 of 32
    4 feed-forward   + a position-wise Linear + ReLU after the attention
    5 residual       3 blocks, x + sa(x) and x + ffwd(x), projections, FFN 4x
    6 layernorm      + pre-norm LayerNorm in each block and before the lm head
    7 full           + dropout, scaled up: jaxgpt.model.GPT (6 layers, 6 heads, 384 embd)

The stage models mirror the lecture's PyTorch modules and their default init
(nn.Embedding ~ N(0, 1), nn.Linear ~ U(+-1/sqrt(fan_in))); the optimizer is
torch.optim.AdamW with its defaults (weight decay 0.01 on every parameter). One deliberate
difference: attention scores are scaled by 1/sqrt(head_size), as in the lecture's final
gpt.py, where its v2.py scaled by 1/sqrt(n_embd) (the same for the single head of 32). Training and
evaluation (lecture.py) reuse the project's code: data.get_batch for the batches, train.train_steps
(several steps per compiled call, lax.scan) and train.eval_loss.
"""

import dataclasses
import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgpt.config import GPTConfig
from jaxgpt.model import GPT


def _uniform_fan_in(fan_in: int):
    # torch.nn.Linear's default init of weight and bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    bound = fan_in**-0.5
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(
        key, shape, dtype, -bound, bound
    )


class Linear(nn.Module):
    """torch.nn.Linear: y = x @ kernel (+ bias), with torch's default init."""

    features: int
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        init = _uniform_fan_in(x.shape[-1])
        y = x @ self.param("kernel", init, (x.shape[-1], self.features))
        return y + self.param("bias", init, (self.features,)) if self.use_bias else y


def _embed(num: int, features: int, name: str) -> nn.Embed:
    # torch.nn.Embedding's default init: N(0, 1)
    return nn.Embed(num, features, embedding_init=nn.initializers.normal(1.0), name=name)


def _layer_norm(name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=1e-5, name=name)  # torch.nn.LayerNorm's eps


class Head(nn.Module):
    """One head of causal self-attention."""

    head_size: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        B, T, C = x.shape
        k = Linear(self.head_size, use_bias=False, name="key")(x)  # (B, T, hs)
        q = Linear(self.head_size, use_bias=False, name="query")(x)  # (B, T, hs)
        v = Linear(self.head_size, use_bias=False, name="value")(x)  # (B, T, hs)
        # affinities, scaled by 1/sqrt(hs) so that their variance stays ~1 at init and the
        # softmax does not saturate into one-hot attention
        wei = q @ k.swapaxes(-2, -1) * self.head_size**-0.5  # (B, T, T)
        tril = jnp.tril(jnp.ones((T, T), bool))
        wei = jnp.where(tril, wei, -jnp.inf)  # a token talks only to the past
        wei = jax.nn.softmax(wei, axis=-1)  # (B, T, T), each row sums to 1
        return wei @ v  # (B, T, hs)


class MultiHeadAttention(nn.Module):
    """num_heads heads in parallel, outputs concatenated; `proj` adds the output projection
    the residual stages use."""

    num_heads: int
    head_size: int
    proj: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        out = jnp.concatenate(
            [Head(self.head_size, name=f"heads_{i}")(x) for i in range(self.num_heads)], axis=-1
        )  # (B, T, num_heads * hs)
        return Linear(x.shape[-1], name="proj")(out) if self.proj else out  # (B, T, C)


class FeedForward(nn.Module):
    """Per-token computation: Linear(C, hidden) + ReLU, then (`proj`) Linear(hidden, C)."""

    hidden: int
    proj: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = nn.relu(Linear(self.hidden, name="c_fc")(x))  # (B, T, hidden)
        return Linear(x.shape[-1], name="c_proj")(h) if self.proj else h  # (B, T, C)


class Block(nn.Module):
    """Communication (attention) then computation (feed-forward), each added to the
    residual stream; `layer_norm` normalises the input of each (pre-norm)."""

    config: GPTConfig
    layer_norm: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        C, nh = self.config.n_embd, self.config.n_head
        ln1 = _layer_norm("ln1") if self.layer_norm else lambda h: h
        ln2 = _layer_norm("ln2") if self.layer_norm else lambda h: h
        x = x + MultiHeadAttention(nh, C // nh, proj=True, name="sa")(ln1(x))  # (B, T, C)
        x = x + FeedForward(4 * C, proj=True, name="ffwd")(ln2(x))  # (B, T, C)
        return x


class BigramLanguageModel(nn.Module):
    """Stage 1: each token reads the logits of the next token off a row of a (V, V) table."""

    config: GPTConfig

    @nn.compact
    def __call__(self, idx: jax.Array, deterministic: bool = True) -> jax.Array:
        V = self.config.vocab_size
        return _embed(V, V, "token_embedding_table")(idx)  # (B, T, V)


def _token_and_position(config: GPTConfig, idx: jax.Array) -> jax.Array:
    """Token + position embeddings, built in the calling module: (B, T) -> (B, T, C)."""
    tok_emb = _embed(config.vocab_size, config.n_embd, "token_embedding_table")(idx)  # (B, T, C)
    pos_emb = _embed(config.block_size, config.n_embd, "position_embedding_table")(
        jnp.arange(idx.shape[1])
    )  # (T, C)
    return tok_emb + pos_emb


class AttentionLanguageModel(nn.Module):
    """Stages 2-4: embeddings, one layer of n_head attention heads (no residual yet),
    optionally a feed-forward layer (C -> C, ReLU), and the lm head."""

    config: GPTConfig
    ffwd: bool = False

    @nn.compact
    def __call__(self, idx: jax.Array, deterministic: bool = True) -> jax.Array:
        cfg = self.config
        x = _token_and_position(cfg, idx)  # (B, T, C)
        x = MultiHeadAttention(cfg.n_head, cfg.n_embd // cfg.n_head, name="sa_heads")(x)
        if self.ffwd:
            x = FeedForward(cfg.n_embd, name="ffwd")(x)  # (B, T, C)
        return Linear(cfg.vocab_size, name="lm_head")(x)  # (B, T, V)


class TransformerLanguageModel(nn.Module):
    """Stages 5-6: embeddings, n_layer residual blocks, (ln_f), lm head."""

    config: GPTConfig
    layer_norm: bool = False

    @nn.compact
    def __call__(self, idx: jax.Array, deterministic: bool = True) -> jax.Array:
        cfg = self.config
        x = _token_and_position(cfg, idx)  # (B, T, C)
        for i in range(cfg.n_layer):
            x = Block(cfg, self.layer_norm, name=f"blocks_{i}")(x)  # (B, T, C)
        if self.layer_norm:
            x = _layer_norm("ln_f")(x)
        return Linear(cfg.vocab_size, name="lm_head")(x)  # (B, T, V)


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    make_model: Callable[[GPTConfig], nn.Module]
    settings: dict  # TrainConfig fields beyond LECTURE
    reference: str  # the lecture's val loss for this stage


# the lecture's v2.py settings; AdamW with torch's defaults
LECTURE = dict(
    batch_size=32,
    block_size=8,
    n_embd=32,
    n_head=4,
    n_layer=3,
    dropout=0.0,
    learning_rate=1e-3,
    max_iters=5000,
    eval_interval=500,
    eval_iters=200,
    weight_decay=0.01,
    beta1=0.9,
    beta2=0.999,
    seed=1337,
)

STAGES = (
    Stage(
        "bigram",
        BigramLanguageModel,
        dict(learning_rate=1e-2, max_iters=3000, eval_interval=300),
        "2.4911",
    ),
    Stage("single head (1x32)", AttentionLanguageModel, dict(n_head=1), "2.4084"),
    Stage("multi-head (4x8)", AttentionLanguageModel, {}, "2.2858"),
    Stage("feed-forward", functools.partial(AttentionLanguageModel, ffwd=True), {}, "2.2409"),
    Stage("residual blocks (3, FFN 4x)", TransformerLanguageModel, {}, "2.0811"),
    Stage(
        "layernorm (pre-norm)",
        functools.partial(TransformerLanguageModel, layer_norm=True),
        {},
        "2.0589",
    ),
    Stage(
        "full GPT (6x6x384, dropout 0.2)",
        GPT,
        dict(
            batch_size=64,
            block_size=256,
            n_embd=384,
            n_head=6,
            n_layer=6,
            dropout=0.2,
            learning_rate=3e-4,
        ),
        "~1.48 (GPU)",
    ),
)
