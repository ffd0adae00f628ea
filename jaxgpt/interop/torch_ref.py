"""A compact PyTorch GPT with nanoGPT's architecture, init, AdamW groups and sampling.

The reference jaxgpt is checked against (parity tests) and timed against (the
JAX-vs-PyTorch benchmark). Module and parameter names are nanoGPT's, so its state_dict
is interchangeable with a nanoGPT `ckpt.pt`'s `model` entry. Needs the `torch` extra.

GPTConfig's options after nanoGPT are written here the way PyTorch code writes them
(transformers' Llama for rotary embeddings, RMSNorm, SwiGLU and grouped-query attention),
independently of jaxgpt's JAX code, so the parity tests check each one: c_attn's rows are
q (n_head * hs, query head h reads key/value head h // G), k, v (n_kv_head * hs each);
a SwiGLU c_fc's rows are the gate, then the up projection; an untied head is `lm_head`.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from jaxgpt.config import GPTConfig


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (PyTorch's has no bias=False before 2.1), or RMSNorm
    (rms=True), with an optional weight."""

    def __init__(self, ndim: int, bias: bool, eps: float = 1e-5, weight=True, rms=False):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim)) if weight else None
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias and not rms else None
        self.ndim, self.eps, self.rms = ndim, eps, rms

    def forward(self, x):
        if self.rms:
            return F.rms_norm(x, (self.ndim,), self.weight, self.eps)
        return F.layer_norm(x, (self.ndim,), self.weight, self.bias, self.eps)


def block_norm(config: GPTConfig, ndim: int | None = None, rms: bool | None = None):
    rms = config.norm == "rmsnorm" if rms is None else rms
    return LayerNorm(ndim or config.n_embd, config.bias, config.norm_eps, config.norm_scale, rms)


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rotary(x, theta: float):
    """transformers' apply_rotary_pos_emb on (B, nh, T, hs) at positions 0..T-1."""
    T, hs = x.shape[-2], x.shape[-1]
    inv_freq = 1.0 / theta ** (torch.arange(0, hs, 2, dtype=torch.float32) / hs)
    freqs = torch.outer(torch.arange(T, dtype=torch.float32), inv_freq)  # (T, hs/2)
    emb = torch.cat((freqs, freqs), dim=-1)
    return x * emb.cos() + rotate_half(x) * emb.sin()


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        hs, nkv = config.head_size, config.kv_heads
        self.c_attn = nn.Linear(config.n_embd, config.n_embd + 2 * nkv * hs, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        if config.qk_norm:
            self.q_norm, self.k_norm = block_norm(config, hs, True), block_norm(config, hs, True)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout
        self.n_kv_head, self.config = nkv, config

    def forward(self, x):
        B, T, C = x.size()
        hs, nkv = C // self.n_head, self.n_kv_head
        q, k, v = self.c_attn(x).split([C, nkv * hs, nkv * hs], dim=2)
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, nkv, hs).transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, nkv, hs).transpose(1, 2)
        if self.config.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.config.pos_encoding == "rope":
            q, k = rotary(q, self.config.rope_theta), rotary(k, self.config.rope_theta)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=True,
            enable_gqa=nkv < self.n_head,
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class ReLU2(nn.Module):
    def forward(self, x):
        return F.relu(x).square()


ACTIVATIONS = {"gelu": nn.GELU, "gelu_tanh": lambda: nn.GELU(approximate="tanh"), "relu2": ReLU2}


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        H = config.hidden_size
        self.swiglu = config.mlp == "swiglu"
        fc_out = 2 * H if self.swiglu else H  # SwiGLU: gate and up projections
        self.c_fc = nn.Linear(config.n_embd, fc_out, bias=config.bias)
        self.gelu = nn.SiLU() if self.swiglu else ACTIVATIONS[config.mlp]()
        self.c_proj = nn.Linear(H, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        h = self.c_fc(x)
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)
            h = self.gelu(gate) * up
        else:
            h = self.gelu(h)
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = block_norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = block_norm(config)
        self.mlp = MLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        modules = dict(wte=nn.Embedding(config.vocab_size, config.n_embd))
        if config.pos_encoding == "learned":  # nanoGPT's order: its AdamW numbers them so
            modules["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        modules["drop"] = nn.Dropout(config.dropout)
        modules["h"] = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        modules["ln_f"] = block_norm(config)
        self.transformer = nn.ModuleDict(modules)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
            if config.zero_init_proj and name.endswith("c_proj.weight"):
                torch.nn.init.zeros_(p)
        if config.zero_init_proj and not config.tie_embeddings:
            torch.nn.init.zeros_(self.lm_head.weight)

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None, last_only=False):
        """Logits (B, T, V) and, given targets, the mean cross entropy (ignore_index -1).

        last_only: logits of the last position only, (B, 1, V), as nanoGPT at inference.
        """
        T = idx.size(1)
        x = self.transformer.wte(idx)
        if self.config.pos_encoding == "learned":
            x = x + self.transformer.wpe(torch.arange(0, T, dtype=torch.long, device=idx.device))
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        logits = self.lm_head(x[:, [-1], :] if last_only else x)
        if self.config.logit_softcap:
            cap = self.config.logit_softcap
            logits = cap * torch.tanh(logits / cap)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return logits, loss

    def configure_optimizers(self, weight_decay, learning_rate, betas):
        """AdamW with weight decay on every >= 2-D parameter, none on the rest."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None):
        """nanoGPT's sampler: crop to block_size, last logits / temperature, top_k, draw."""
        for _ in range(max_new_tokens):
            idx_cond = idx[:, -self.config.block_size :]
            logits, _ = self(idx_cond, last_only=True)
            logits = logits[:, -1, :] / temperature
            if top_k is not None:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = -float("Inf")
            probs = F.softmax(logits, dim=-1)
            idx = torch.cat((idx, torch.multinomial(probs, num_samples=1)), dim=1)
        return idx
