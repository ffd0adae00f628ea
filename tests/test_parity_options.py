"""The model options after nanoGPT compute what the PyTorch reference computes.

Each option of conftest.OPTIONS alone, and the Llama and speedrun combinations, on a small
model (2 layers, 4 heads, 32 embd, block 16, vocab 384, weights perturbed from the init so
every parameter matters): logits within 1e-5 (max abs), gradients within 1e-4 (relative,
every parameter), and 20 optimizer steps (clipping, warmup + cosine, weight decay, gradient
accumulation) within 1e-4 (losses), with AdamW and with Muon (test_parity.MUON_RUN: Muon
on the blocks' kernels, AdamW on the rest; torch_ref.Muon splits c_attn and a SwiGLU c_fc
into the matrices jaxgpt's dimension numbers make). torch_ref.py writes each option the
way PyTorch code does (transformers' Llama), independently of jaxgpt. `pytest -s` prints
the figures.
"""

import dataclasses
import functools

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import COMBOS, OPTIONS  # noqa: E402
from test_parity import ADAMW_RUN, MUON_RUN, logits_and_grads, tokens  # noqa: E402
from torch_helpers import perturbed_ref, torch_steps  # noqa: E402

from jaxgpt import train  # noqa: E402
from jaxgpt.config import GPTConfig  # noqa: E402
from jaxgpt.interop import torch_ref  # noqa: E402
from jaxgpt.interop.statedict import from_nanogpt, to_nanogpt  # noqa: E402
from jaxgpt.model import GPT  # noqa: E402

BASE = GPTConfig(block_size=16, vocab_size=384, n_layer=2, n_head=4, n_embd=32, bias=True)
CASES = {**OPTIONS, **COMBOS}
X, Y = tokens((2, 16), 1, high=384), tokens((2, 16), 2, high=384)
# LLVM at -O0: these small programs compile ~3x faster (30 of them), the same math
O0 = {"xla_backend_optimization_level": 0}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    """(name, config, perturbed torch_ref model, the same weights in jaxgpt, jaxgpt's
    logits and gradients on (X, Y))."""
    config = dataclasses.replace(BASE, **CASES[request.param])
    ref = perturbed_ref(config)
    params = from_nanogpt(ref.state_dict(), config)
    logits, grads = logits_and_grads.lower(params, X, Y, config=config).compile(O0)(params, X, Y)
    return request.param, config, ref, params, np.asarray(logits), grads


def test_state_dict_round_trip(case):
    _, config, ref, params, _, _ = case
    sd = to_nanogpt(params, config)
    want = {k: v.numpy() for k, v in ref.state_dict().items()}
    assert sd.keys() == want.keys()
    for k in sd:
        np.testing.assert_array_equal(sd[k], want[k], err_msg=k)


def test_logits_match_torch_reference(case):
    name, _, ref, _, logits, _ = case
    with torch.no_grad():
        expected = ref(torch.from_numpy(X))[0].numpy()
    err = np.abs(logits - expected).max()
    print(f"\n{name}: logits vs torch_ref max abs {err:.2e}")
    assert err < 1e-5


def test_gradients_match_torch_reference(case):
    name, config, ref, _, _, grads = case
    ref.zero_grad()
    ref(torch.from_numpy(X), torch.from_numpy(Y))[1].backward()
    expected = from_nanogpt({n: p.grad for n, p in ref.named_parameters()}, config)
    rel = jax.tree.map(
        lambda g, e: float(np.abs(np.asarray(g) - e).max() / max(np.abs(e).max(), 1e-30)),
        grads,
        expected,
    )
    worst = max(jax.tree.leaves(rel))
    print(f"\n{name}: gradients vs torch_ref worst max-abs relative {worst:.2e}")
    assert len(jax.tree.leaves(rel)) == len(list(ref.parameters()))
    assert worst < 1e-4, rel


@pytest.mark.parametrize("cfg", [ADAMW_RUN, MUON_RUN], ids=["adamw", "muon"])
def test_twenty_steps_match_torch_reference(case, cfg):
    name, config, _, _, _, _ = case
    ref = perturbed_ref(config).train()
    params = from_nanogpt(ref.state_dict(), config)
    # a 40-token "language" in the 384-token vocabulary: the loss falls from ~ln(384)
    shape = (20, cfg.gradient_accumulation_steps, cfg.batch_size, cfg.block_size + 1)
    batches = tokens(shape, 3, high=40)
    betas, muon = (cfg.beta1, cfg.beta2), torch_ref.muon_settings(cfg)
    opt = ref.configure_optimizers(cfg.weight_decay, cfg.learning_rate, betas, muon)
    expected = torch_steps(ref, opt, batches, cfg)
    tx = train.make_optimizer(cfg)
    state = train.init_state(params, tx)
    step = jax.jit(functools.partial(train.train_step, model=GPT(config), tx=tx, cfg=cfg))
    step = step.lower(state, batches[0]).compile(O0)
    losses = []
    for windows in batches:
        state, metrics = step(state, windows)
        losses.append(float(metrics["loss"]))
    err = np.abs(np.array(losses) - np.array(expected)).max()
    opt_name = cfg.optimizer
    print(
        f"\n{name}: 20 {opt_name} steps {expected[0]:.4f} -> {expected[-1]:.4f}, max abs {err:.2e}"
    )
    assert expected[-1] < expected[0] - 0.5  # it trains
    assert err < 1e-4
