"""`jaxgpt bench` and the JAX-vs-PyTorch harness on a tiny config."""

import json

import numpy as np
import pytest

from jaxgpt.cli import main
from jaxgpt.config import TrainConfig
from jaxgpt.perf import compare
from jaxgpt.perf.mfu import flops_per_token

TINY = [
    "--n_layer=2",
    "--n_head=2",
    "--n_embd=32",
    "--block_size=16",
    "--batch_size=4",
    "--dropout=0.0",
    "--vocab_size=65",
    "--iters=5",
    "--warmup=2",
]


def test_bench_figures_are_consistent_and_profile_is_written(tmp_path, capsys):
    assert main(["bench", *TINY, "--json", f"--profile={tmp_path}"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    tokens = 4 * 16
    assert r["ms_per_iter"] > 0 and r["compile_s"] >= 0
    assert r["tokens_per_s"] == pytest.approx(tokens / r["ms_per_iter"] * 1000)
    cfg = TrainConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, batch_size=4)
    flops = flops_per_token(cfg.model_config(65), int(r["params_m"] * 1e6)) * tokens
    assert r["tflops"] == pytest.approx(flops / r["ms_per_iter"] * 1e-9, rel=1e-3)
    assert r["peak_source"].startswith("measured")  # a CPU: no datasheet to pretend
    assert r["mfu"] == pytest.approx(r["tflops"] / r["peak_tflops"])
    assert r["peak_memory_gb"] > 0
    assert len(r["losses"]) == 5 and all(np.isfinite(r["losses"]))
    assert list(tmp_path.rglob("*.xplane.pb"))  # the jax.profiler trace


def test_unknown_impl_is_a_one_line_error(capsys):
    assert main(["bench", *TINY, "--impl=tensorflow"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--impl=tensorflow" in err[0]


def test_jax_and_torch_train_the_same_function(tmp_path):
    """Same init, batches and optimizer: the two loss curves agree step by step, and the
    harness reports paired ratios, a table and a plot."""
    pytest.importorskip("torch")
    summary = compare.compare(TINY, ("jax", "torch"), rounds=1)
    jax_losses = summary["jax"]["result"]["losses"]
    torch_losses = summary["torch"]["result"]["losses"]
    np.testing.assert_allclose(jax_losses, torch_losses, rtol=1e-4)
    for s in summary.values():
        assert len(s["runs_ms"]) == 1 and s["median_ms"] == pytest.approx(np.median(s["runs_ms"]))
    ratios = summary["torch"]["paired_ratios"]
    jax_ms, torch_ms = summary["jax"]["runs_ms"], summary["torch"]["runs_ms"]
    assert ratios == pytest.approx([a / b for a, b in zip(jax_ms, torch_ms, strict=True)])
    table = compare.markdown_table(summary)
    assert table.count("\n") == 3 and "torch 2." in table
    compare.plot_losses(summary, str(tmp_path / "cmp.png"))
    assert (tmp_path / "cmp.png").stat().st_size > 10_000


def test_bench_with_muon_trains_the_same_function_in_jax_and_torch():
    """`jaxgpt bench --optimizer=muon --lr_schedule=wsd` (bench_train) and its PyTorch side
    (`--compare=torch`: torch_bench_train, torch_ref's Muon) give the same loss curve."""
    pytest.importorskip("torch")
    from jaxgpt.perf.bench import bench_train

    cfg = TrainConfig(
        n_layer=2,
        n_head=2,
        n_embd=32,
        block_size=16,
        batch_size=4,
        dropout=0.0,
        optimizer="muon",
        lr_schedule="wsd",
        warmup_iters=2,
        lr_decay_iters=6,
        muon_weight_decay=0.1,
    )
    kw = dict(iters=5, warmup=2, vocab_size=65, measure_peak=False)
    jax_losses = bench_train(cfg, **kw)["losses"]
    torch_losses = compare.torch_bench_train(cfg, **kw)["losses"]
    np.testing.assert_allclose(jax_losses, torch_losses, rtol=1e-4)
