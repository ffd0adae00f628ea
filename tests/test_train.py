"""Training: nanoGPT's LR schedule and wsd, weight-decay grouping, the loop, exact resume
(with AdamW and with Muon)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_run

from jaxgpt import checkpoint, loop, sharding, train
from jaxgpt.config import TrainConfig
from jaxgpt.model import init_params


def nanogpt_lr(it, cfg):
    """nanoGPT train.py's get_lr, transcribed."""
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if it > cfg.lr_decay_iters:
        return cfg.min_lr
    decay_ratio = (it - cfg.warmup_iters) / (cfg.lr_decay_iters - cfg.warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return cfg.min_lr + coeff * (cfg.learning_rate - cfg.min_lr)


@pytest.mark.parametrize("it", [0, 1, 50, 99, 100, 101, 1000, 2999, 3000, 5000, 5001, 9999])
def test_lr_schedule_equals_nanogpt(it):
    cfg = TrainConfig(learning_rate=1e-3, warmup_iters=100, lr_decay_iters=5000, min_lr=1e-4)
    assert float(train.get_lr(it, cfg)) == pytest.approx(nanogpt_lr(it, cfg), rel=1e-6)
    traced = jax.jit(lambda i: train.get_lr(i, cfg))(jnp.int32(it))
    assert float(traced) == pytest.approx(nanogpt_lr(it, cfg), rel=1e-5)


# Muon (its state in scan_layers' stacked layout) on the wsd schedule
MUON = dict(optimizer="muon", lr_schedule="wsd", scan_layers=True)
WSD = TrainConfig(
    learning_rate=1e-3,
    warmup_iters=100,
    lr_decay_iters=5000,
    min_lr=1e-4,
    lr_schedule="wsd",
    cooldown_frac=0.2,
)


@pytest.mark.parametrize("it", [0, 50, 99, 100, 2000, 3999, 4000, 4500, 4999, 5000, 5001, 9999])
def test_wsd_schedule_warms_up_holds_then_decays_linearly(it):
    """nanoGPT's warmup, learning_rate up to step 4000 (the last 20% of 5000 decay), a
    straight line to min_lr at 5000, then min_lr; the same traced."""
    cfg = WSD
    if it < cfg.warmup_iters:
        want = nanogpt_lr(it, cfg)  # the cosine schedule's warmup
    elif it <= 4000:
        want = cfg.learning_rate
    elif it <= 5000:
        want = cfg.learning_rate + (it - 4000) / 1000 * (cfg.min_lr - cfg.learning_rate)
    else:
        want = cfg.min_lr
    assert float(train.get_lr(it, cfg)) == pytest.approx(want, rel=1e-6)
    traced = jax.jit(lambda i: train.get_lr(i, cfg))(jnp.int32(it))
    assert float(traced) == pytest.approx(want, rel=1e-5)


def test_constant_lr_when_decay_off():
    cfg = TrainConfig(learning_rate=3e-5, decay_lr=False)
    assert float(train.get_lr(7, cfg)) == pytest.approx(3e-5)


def test_weight_decay_only_on_matrices_and_embeddings():
    from conftest import TINY_MODEL

    params = init_params(TINY_MODEL, jax.random.key(0))
    mask = train.decay_mask(params)
    for path, decayed in jax.tree_util.tree_leaves_with_path(mask):
        leaf = path[-1].key
        assert decayed == (leaf in ("kernel", "embedding")), path
    # nanoGPT's rule (>= 2-D) on the HF-shaped tensors gives the same groups
    n_decay = sum(p.size for p, d in zip(jax.tree.leaves(params), jax.tree.leaves(mask)) if d)
    n_2d = sum(
        p.size
        for path, p in jax.tree_util.tree_leaves_with_path(params)
        if path[-1].key in ("kernel", "embedding")
    )
    assert n_decay == n_2d


def test_created_state_holds_the_parameters_of_a_default_compile():
    """create_state compiles its initialiser with INIT_COMPILER_OPTIONS (-O1 on CPU): the
    parameters must be those of a default-compiled init, to the bit (-O0 would not be)."""
    from conftest import TINY_MODEL

    cfg = TrainConfig()
    tx = train.make_optimizer(cfg)
    state = train.create_state(TINY_MODEL, tx, sharding.make_mesh(cfg), jax.random.key(3))
    expected = jax.jit(init_params, static_argnums=0)(TINY_MODEL, jax.random.key(3))
    for got, want in zip(jax.tree.leaves(state.params), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_adamw_step_matches_hand_computed_update():
    """One AdamW step (no clipping) equals the formula torch.optim.AdamW implements."""
    cfg = TrainConfig(
        learning_rate=1e-2,
        warmup_iters=0,
        decay_lr=False,
        weight_decay=0.1,
        beta1=0.9,
        beta2=0.99,
        grad_clip=0.0,
    )
    tx = train.make_optimizer(cfg)
    params = {"w": {"kernel": jnp.array([[1.0, -2.0]])}, "b": {"bias": jnp.array([0.5])}}
    grads = {"w": {"kernel": jnp.array([[0.1, 0.3]])}, "b": {"bias": jnp.array([-0.2])}}
    updates, _ = tx.update(grads, tx.init(params), params)
    lr, eps = 1e-2, 1e-8
    for name, decay in (("w", 0.1), ("b", 0.0)):
        p, g = next(iter(params[name].values())), next(iter(grads[name].values()))
        m_hat, v_hat = g, g * g  # bias-corrected first step
        expected = -lr * decay * p - lr * m_hat / (jnp.sqrt(v_hat) + eps)
        np.testing.assert_allclose(next(iter(updates[name].values())), expected, rtol=1e-6)


@pytest.mark.parametrize("opt", [{}, MUON], ids=["adamw", "muon_wsd_scan"])
def test_gradient_accumulation_equals_big_batch(data_dir, tmp_path, opt):
    cfg_big = tiny_run(data_dir, str(tmp_path), batch_size=8, dropout=0.0, **opt)
    cfg_acc = tiny_run(
        data_dir, str(tmp_path), batch_size=2, gradient_accumulation_steps=4, dropout=0.0, **opt
    )
    run = loop.setup(cfg_big)
    windows = loop.train_batch(run, 0)  # (1, 8, T + 1)
    step_big = train.make_train_step(run.model_cfg, cfg_big, run.tx, run.mesh)
    step_acc = train.make_train_step(run.model_cfg, cfg_acc, run.tx, run.mesh)
    state0 = jax.tree.map(jnp.copy, run.state)
    s_big, m_big = step_big(run.state, windows)
    s_acc, m_acc = step_acc(state0, np.asarray(windows).reshape(4, 2, -1))
    np.testing.assert_allclose(m_acc["loss"], m_big["loss"], rtol=1e-5)
    np.testing.assert_allclose(m_acc["grad_norm"], m_big["grad_norm"], rtol=1e-4)
    for a, b in zip(jax.tree.leaves(s_acc.params), jax.tree.leaves(s_big.params)):
        np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("opt", [{}, dict(optimizer="muon", max_iters=10)], ids=["adamw", "muon"])
def test_several_steps_per_call_equal_single_steps(data_dir, tmp_path, opt):
    one = loop.run_training(tiny_run(data_dir, str(tmp_path / "a"), **opt))
    four = loop.run_training(tiny_run(data_dir, str(tmp_path / "b"), steps_per_call=5, **opt))
    assert one["val"] == pytest.approx(four["val"], abs=1e-5)
    assert one["train"] == pytest.approx(four["train"], abs=1e-5)


def test_training_lowers_the_loss(data_dir, tmp_path, capsys):
    losses = loop.run_training(tiny_run(data_dir, str(tmp_path), max_iters=60, eval_interval=30))
    out = capsys.readouterr().out
    assert "step 0: train loss" in out and "step 60: train loss" in out
    first = float(out.split("step 0: train loss ")[1].split(",")[0])
    assert losses["val"] < first - 0.5, (first, losses)
    assert checkpoint.latest_step(str(tmp_path)) == 60


@pytest.mark.parametrize("opt", [{}, MUON], ids=["adamw", "muon_wsd_scan"])
def test_resume_is_bit_identical(data_dir, tmp_path, opt):
    """Stop after the checkpoint at step 20, resume to 40: the same losses and weights as
    an uninterrupted run to 40 (dropout on, so the keys must line up too). Also with
    Muon's state (scan_layers: its stacked layout), and the wsd schedule."""
    full = loop.setup(tiny_run(data_dir, str(tmp_path / "full"), max_iters=40, **opt))
    full_losses = loop.train_loop(full)
    loop.run_training(tiny_run(data_dir, str(tmp_path / "split"), max_iters=20, **opt))
    resumed = loop.setup(
        tiny_run(data_dir, str(tmp_path / "split"), max_iters=40, init_from="resume", **opt)
    )
    assert resumed.iter_num == 20
    resumed_losses = loop.train_loop(resumed)
    assert resumed_losses == full_losses  # exact float equality
    for a, b in zip(jax.tree.leaves(resumed.state), jax.tree.leaves(full.state)):
        np.testing.assert_array_equal(a, b)


def test_eval_only_evaluates_without_training(data_dir, tmp_path, capsys):
    loop.run_training(tiny_run(data_dir, str(tmp_path), max_iters=10))
    capsys.readouterr()
    cfg = tiny_run(data_dir, str(tmp_path), init_from="resume", eval_only=True, max_iters=30)
    run = loop.setup(cfg)
    loop.train_loop(run)
    out = capsys.readouterr().out
    assert "step 10: train loss" in out and "iter 10:" not in out
    assert run.iter_num == 10 and checkpoint.latest_step(str(tmp_path)) == 10
