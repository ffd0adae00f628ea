"""A compact PyTorch GPT with nanoGPT's architecture, init, AdamW groups and sampling,
and jaxgpt's Muon (optimizer=muon) in float32.

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


def block_norm(config: GPTConfig, ndim: int | None = None, qk: bool = False):
    """A block's norm; qk: q_norm or k_norm, an RMSNorm with qk_norm's gain or none."""
    rms, scale = (True, config.qk_gain) if qk else (config.norm == "rmsnorm", config.norm_scale)
    return LayerNorm(ndim or config.n_embd, config.bias, config.norm_eps, scale, rms)


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
            self.q_norm = block_norm(config, hs, qk=True)
            self.k_norm = block_norm(config, hs, qk=True)
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

    def configure_optimizers(self, weight_decay, learning_rate, betas, muon=None):
        """AdamW with weight decay on every >= 2-D parameter, none on the rest; given
        `muon` (muon_settings), jaxgpt's Muon and AdamW groups (configure_muon)."""
        if muon is not None:
            return configure_muon(self, weight_decay, learning_rate, betas, muon)
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


# Muon (optimizer=muon): jaxgpt's definition (jaxgpt/muon.py, optax's scale_by_muon chain)
# in float32 PyTorch, for the parity tests and the JAX-vs-PyTorch benchmark. It differs
# from torch.optim.Muon where optax does (muon.py): bias-corrected Nesterov momentum,
# float32 instead of bfloat16 Newton-Schulz, eps added to the norm.

NS_COEFFS = (3.4445, -4.7750, 2.0315)  # optax's and torch's default (a, b, c)


def newton_schulz(g: torch.Tensor, steps: int, eps: float = 1e-8) -> torch.Tensor:
    """optax's orthogonalize_via_newton_schulz (frobenius preconditioning) of a matrix."""
    a, b, c = NS_COEFFS
    x = g.T if g.shape[0] > g.shape[1] else g  # the wide orientation, as optax
    x = x / (torch.linalg.matrix_norm(x) + eps)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if g.shape[0] > g.shape[1] else x


class Muon(torch.optim.Optimizer):
    """jaxgpt's Muon for 2-D weights of shape (out, in), each split into `row_blocks`
    matrices along its rows (nanoGPT's c_attn (3C, C): q, k and v, as jaxgpt's
    dimension numbers split its (C, 3, nh, hs) kernel), or into the row sets a group's
    `rows` lists (index tensors: configure_muon's grouped-query c_attn and SwiGLU c_fc).

    mu = momentum mu + (1 - momentum) g; Nesterov's M = momentum mu / (1 - momentum^(t+1))
    + (1 - momentum) g / (1 - momentum^t), else M = mu / (1 - momentum^t); each block of M
    orthogonalised (newton_schulz) and scaled by sqrt(max(1, out / in)) ("original") or
    0.2 sqrt(max(out, in)) ("match_rms_adamw"); W -= lr (update + weight_decay W).
    """

    def __init__(
        self,
        params,
        lr: float,
        momentum: float = 0.95,
        nesterov: bool = True,
        weight_decay: float = 0.0,
        ns_steps: int = 5,
        adjust_lr_fn: str = "original",
        row_blocks: int = 1,
    ):
        defaults = dict(
            lr=lr,
            momentum=momentum,
            nesterov=nesterov,
            weight_decay=weight_decay,
            ns_steps=ns_steps,
            adjust_lr_fn=adjust_lr_fn,
            row_blocks=row_blocks,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            beta = group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"], state["mu"] = 0, torch.zeros_like(p)
                state["step"] += 1
                t, mu, g = state["step"], state["mu"], p.grad
                mu.mul_(beta).add_((1 - beta) * g)
                if group["nesterov"]:
                    m = beta * mu / (1 - beta ** (t + 1)) + (1 - beta) * g / (1 - beta**t)
                else:
                    m = mu / (1 - beta**t)
                rows = group.get("rows") or torch.arange(len(m)).chunk(group["row_blocks"])
                update = torch.empty_like(m)
                for idx in rows:  # each row set is one matrix
                    update[idx] = self._orthogonal(m[idx], group)
                p.sub_(group["lr"] * (update + group["weight_decay"] * p))

    @staticmethod
    def _orthogonal(block: torch.Tensor, group: dict) -> torch.Tensor:
        fan_out, fan_in = block.shape
        if group["adjust_lr_fn"] == "match_rms_adamw":
            scale = 0.2 * math.sqrt(max(fan_in, fan_out))
        else:
            scale = math.sqrt(max(1.0, fan_out / fan_in))
        return scale * newton_schulz(block, group["ns_steps"])


class Optimizers:
    """Several optimizers stepped as one; param_groups lists all of their groups."""

    def __init__(self, *optimizers):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.optimizers for g in opt.param_groups]

    def step(self):
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self, set_to_none: bool = True):
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)


def muon_settings(cfg) -> dict | None:
    """A TrainConfig's Muon keys as configure_muon's arguments; None for optimizer=adamw."""
    if cfg.optimizer != "muon":
        return None
    return dict(
        lr=cfg.muon_lr,
        momentum=cfg.muon_momentum,
        nesterov=cfg.muon_nesterov,
        weight_decay=cfg.muon_weight_decay,
        ns_steps=cfg.muon_ns_steps,
        adjust_lr_fn=cfg.muon_lr_scale,
    )


def qkv_rows(config: GPTConfig) -> list[torch.Tensor]:
    """The matrices Muon makes of c_attn's rows, as jaxgpt's kernel (C, G + 2, nkv, hs)
    has them: query slice i holds query heads j * G + i of every key/value head j (rows in
    head order here), then the keys and the values."""
    nh, nkv, hs = config.n_head, config.kv_heads, config.head_size
    G, q = nh // nkv, torch.arange(nh * hs).view(nkv, nh // nkv, hs)  # (j, i, hs): head j*G+i
    kv = torch.arange(nh * hs, (nh + 2 * nkv) * hs).view(2, nkv * hs)
    return [q[:, i].reshape(-1) for i in range(G)] + [kv[0], kv[1]]


def mlp_rows(config: GPTConfig) -> list[torch.Tensor]:
    """SwiGLU's c_fc: the gate and the up projection are two matrices, as jaxgpt's (C, 2, H)."""
    H = config.hidden_size
    return list(torch.arange(2 * H).view(2, H)) if config.mlp == "swiglu" else [torch.arange(H)]


def configure_muon(model: GPT, weight_decay, learning_rate, betas, muon: dict) -> Optimizers:
    """jaxgpt's groups: Muon on the weights of the blocks' Linears (c_attn split into q, k
    and v), nanoGPT's AdamW groups on the rest. Every group carries `lr_scale`: the factor
    of the run's schedule (learning_rate's) that gives its lr."""
    blocks = model.transformer.h
    kernels = [m.weight for m in blocks.modules() if isinstance(m, nn.Linear)]
    qkv, muon_ids = {id(b.attn.c_attn.weight) for b in blocks}, {id(k) for k in kernels}
    rest = [p for p in model.parameters() if id(p) not in muon_ids]
    adamw = torch.optim.AdamW(
        [
            {"params": [p for p in rest if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0},
        ],
        lr=learning_rate,
        betas=betas,
    )
    scale = muon["lr"] / learning_rate
    c_fc = {id(b.mlp.c_fc.weight) for b in blocks}
    split = {"c_attn": qkv_rows(model.config), "c_fc": mlp_rows(model.config)}
    groups = [
        {"params": [k for k in kernels if id(k) in qkv], "rows": split["c_attn"]},
        {"params": [k for k in kernels if id(k) in c_fc], "rows": split["c_fc"]},
        {"params": [k for k in kernels if id(k) not in qkv | c_fc], "row_blocks": 1},
    ]
    muon_opt = Muon([dict(g, lr_scale=scale) for g in groups], **muon)
    for group in adamw.param_groups:
        group["lr_scale"] = 1.0
    return Optimizers(adamw, muon_opt)
