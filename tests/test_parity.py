"""jaxgpt computes what PyTorch computes: nanoGPT's model (torch_ref) and HF's GPT-2.

float32 on CPU, vocab 50257, small widths. Same weights give the same logits (1e-5 max
abs) and gradients (1e-4 relative, every parameter); 20 AdamW steps with clipping, the
warmup/cosine schedule, weight decay and gradient accumulation give the same losses
(1e-4), and so do 20 Muon steps (torch_ref.Muon) with the cosine and wsd schedules; greedy
generation gives the same tokens. Each test prints the figure reached
(`pytest -s tests/test_parity.py`).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch_helpers import perturbed_ref, torch_steps  # noqa: E402

from jaxgpt import train  # noqa: E402
from jaxgpt.config import GPTConfig, TrainConfig  # noqa: E402
from jaxgpt.interop import hf, torch_ref  # noqa: E402
from jaxgpt.interop.bundle import Bundle  # noqa: E402
from jaxgpt.interop.statedict import from_nanogpt, to_nanogpt  # noqa: E402
from jaxgpt.model import GPT, cross_entropy  # noqa: E402
from jaxgpt.sample import SamplingParams, generate  # noqa: E402

V = 50257


def gpt2_tiny(bias: bool) -> GPTConfig:
    return GPTConfig(block_size=16, vocab_size=V, n_layer=2, n_head=2, n_embd=32, bias=bias)


def tokens(shape, seed=0, high=V) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, high, shape)


X, Y = tokens((2, 16), 1), tokens((2, 16), 2)  # inputs and targets of every comparison


@functools.partial(jax.jit, static_argnames="config")
def logits_and_grads(params, x, y, config: GPTConfig):
    """jaxgpt's logits and the gradients of the mean cross entropy, in one compile."""

    def loss(p):
        logits = GPT(config).apply({"params": p}, x)
        return cross_entropy(logits, y), logits

    (_, logits), grads = jax.value_and_grad(loss, has_aux=True)(params)
    return logits, grads


@pytest.fixture(scope="module", params=[True, False], ids=["bias", "nobias"])
def pair(request):
    """A perturbed torch_ref model, the same weights in jaxgpt, and jaxgpt's logits and
    gradients on (X, Y)."""
    config = gpt2_tiny(request.param)
    ref = perturbed_ref(config)
    params = from_nanogpt(ref.state_dict(), config)
    logits, grads = logits_and_grads(params, X, Y, config)
    return config, ref, params, np.asarray(logits), grads


def test_logits_match_torch_reference(pair):
    config, ref, _, logits, _ = pair
    with torch.no_grad():
        expected = ref(torch.from_numpy(X))[0].numpy()
    err = np.abs(logits - expected).max()
    print(f"\nlogits vs torch_ref (bias={config.bias}): max abs {err:.2e}")
    assert err < 1e-5


def test_gradients_match_torch_reference(pair):
    config, ref, _, _, grads = pair
    ref.zero_grad()
    ref(torch.from_numpy(X), torch.from_numpy(Y))[1].backward()
    expected = from_nanogpt({n: p.grad for n, p in ref.named_parameters()}, config)
    rel = jax.tree.map(
        lambda g, e: float(np.abs(np.asarray(g) - e).max() / np.abs(e).max()), grads, expected
    )
    worst = max(jax.tree.leaves(rel))
    print(f"\ngradients vs torch_ref (bias={config.bias}): worst max-abs relative {worst:.2e}")
    assert len(jax.tree.leaves(rel)) == len(list(ref.parameters()))
    assert worst < 1e-4, rel


ADAMW_RUN = TrainConfig(
    learning_rate=1e-2,
    weight_decay=0.1,
    beta1=0.9,
    beta2=0.95,
    grad_clip=1.0,
    warmup_iters=4,
    lr_decay_iters=16,  # steps 17-19 run at min_lr
    min_lr=1e-3,
    gradient_accumulation_steps=2,
    batch_size=2,
    block_size=16,
)


def adamw_batches(n_steps: int, cfg: TrainConfig, seed: int = 3) -> np.ndarray:
    # a 300-token "language" so the loss falls quickly from ln(50257)
    shape = (n_steps, cfg.gradient_accumulation_steps, cfg.batch_size, cfg.block_size + 1)
    return tokens(shape, seed, high=300)


def jax_steps(state, batches, config: GPTConfig, cfg: TrainConfig, tx):
    step = jax.jit(functools.partial(train.train_step, model=GPT(config), tx=tx, cfg=cfg))
    losses, norms = [], []
    for windows in batches:
        state, metrics = step(state, jnp.asarray(windows))
        losses.append(float(metrics["loss"]))
        norms.append(float(metrics["grad_norm"]))
    return state, losses, norms


def twenty_steps(config: GPTConfig, cfg: TrainConfig) -> dict:
    """20 steps of cfg's optimizer and schedule from the same perturbed weights, in
    torch_ref and in jaxgpt: both runs' losses, jaxgpt's gradient norms, the largest loss
    difference and the largest difference of the final parameters."""
    ref = perturbed_ref(config).train()
    params = from_nanogpt(ref.state_dict(), config)
    batches = adamw_batches(20, cfg)
    betas = (cfg.beta1, cfg.beta2)
    muon = torch_ref.muon_settings(cfg)
    opt = ref.configure_optimizers(cfg.weight_decay, cfg.learning_rate, betas, muon)
    expected = torch_steps(ref, opt, batches, cfg)
    tx = train.make_optimizer(cfg)
    state, losses, norms = jax_steps(train.init_state(params, tx), batches, config, cfg, tx)
    final = to_nanogpt(state.params, config)
    param_err = max(
        float(np.abs(final[n] - p.detach().numpy()).max()) for n, p in ref.named_parameters()
    )
    loss_err = float(np.abs(np.array(losses) - np.array(expected)).max())
    return dict(expected=expected, norms=norms, loss_err=loss_err, param_err=param_err)


def check_twenty_steps(name: str, config: GPTConfig, cfg: TrainConfig) -> None:
    r = twenty_steps(config, cfg)
    expected = r["expected"]
    print(
        f"\n20 {name} steps: losses {expected[0]:.4f} -> {expected[-1]:.4f}, max abs loss "
        f"difference {r['loss_err']:.2e}, final params max abs difference {r['param_err']:.2e}"
    )
    assert expected[-1] < expected[0] - 1.0  # it trains
    assert any(n > cfg.grad_clip for n in r["norms"])  # clipping was exercised
    assert r["loss_err"] < 1e-4
    # Adam divides by sqrt(v): parameters with near-zero gradients (rows of wte for unseen
    # tokens) amplify float rounding, so parameters agree less tightly than losses
    assert r["param_err"] < 2e-3


def test_twenty_adamw_steps_match_torch_reference():
    check_twenty_steps("AdamW", gpt2_tiny(True), ADAMW_RUN)


# Muon on the blocks' kernels (torch_ref.Muon: jaxgpt's definition in float32), AdamW as
# above on the rest; wsd: warmup 4, stable to step 8, linear decay to min_lr at step 16
MUON_RUN = dataclasses.replace(ADAMW_RUN, optimizer="muon", muon_lr=0.05, muon_weight_decay=0.1)


@pytest.mark.parametrize("schedule", ["cosine", "wsd"])
def test_twenty_muon_steps_match_torch_reference(schedule):
    cfg = dataclasses.replace(MUON_RUN, lr_schedule=schedule, cooldown_frac=0.5)
    check_twenty_steps(f"Muon ({schedule})", gpt2_tiny(True), cfg)


def test_greedy_generation_matches_torch_reference():
    config = gpt2_tiny(True)
    ref = perturbed_ref(config)
    params = from_nanogpt(ref.state_dict(), config)
    prompt = tokens((2, 5), 4)
    # 20 new tokens from a 5-token prompt: the context passes block_size and is cropped
    expected = ref.generate(torch.from_numpy(prompt), 20, top_k=1).numpy()
    got = generate(params, config, prompt, 20, SamplingParams(temperature=0.0))
    print(f"\ngreedy generation (bias={config.bias}): {got.shape[1] - 5} tokens identical")
    np.testing.assert_array_equal(got, expected)


@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers")


@pytest.fixture(scope="module", params=["gelu", "gelu_new"])
def hf_model(transformers, request):
    """A randomly initialised HF GPT2LMHeadModel, biases perturbed: exact GELU, or GPT-2's
    own tanh GELU (gelu_new) with a 3x MLP and eps 1e-6."""
    other = dict(n_inner=96, layer_norm_epsilon=1e-6) if request.param == "gelu_new" else {}
    config = transformers.GPT2Config(
        n_embd=32, n_layer=2, n_head=2, n_positions=16, vocab_size=V,
        activation_function=request.param, **other,
    )  # fmt: skip
    torch.manual_seed(1)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


def hf_logits(model, idx) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(idx)).logits.numpy()


def test_logits_match_transformers_gpt2(hf_model):
    bundle = hf.from_model(hf_model)
    activation = hf_model.config.activation_function
    assert bundle.config.mlp == {"gelu": "gelu", "gelu_new": "gelu_tanh"}[activation]
    logits = np.asarray(logits_and_grads(bundle.params, X, Y, bundle.config)[0])
    err = np.abs(logits - hf_logits(hf_model, X)).max()
    print(f"\nlogits vs transformers GPT2LMHeadModel ({activation}): max abs {err:.2e}")
    assert err < 1e-5


def test_export_writes_the_activation_it_computes(hf_model, transformers, tmp_path):
    bundle = hf.from_model(hf_model)
    hf.save_dir(bundle, tmp_path / "hf")
    model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    keys = ("activation_function", "n_inner", "layer_norm_epsilon")
    assert [getattr(model.config, k) for k in keys] == [getattr(hf_model.config, k) for k in keys]
    err = np.abs(hf_logits(model, X) - hf_logits(hf_model, X)).max()
    print(f"\nGPT-2 ({model.config.activation_function}) -> jaxgpt -> HF: max abs {err:.2e}")
    assert err < 1e-5


def test_exported_hf_directory_loads_in_transformers(pair, transformers, tmp_path):
    config, _, params, logits, _ = pair
    hf.save_dir(Bundle(params, config, hf.bpe_meta()), tmp_path / "hf")
    model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    err = np.abs(hf_logits(model, X) - logits).max()
    print(f"\njaxgpt -> HF directory -> transformers (bias={config.bias}): max abs {err:.2e}")
    assert err < 1e-5
