"""Scaling out: sharded steps equal the single-device step, checkpoints move between meshes,
two processes train like one, bfloat16 tracks float32, scanned layers convert.

Multi-device checks run tests/scale_worker.py in subprocesses that see 8 (or 2) simulated
CPU devices; this process keeps its single device for the rest of the suite.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scale_worker
from conftest import TINY_MODEL, tiny_run

from jaxgpt import checkpoint, cli, ops, sharding
from jaxgpt.config import GPTConfig, TrainConfig
from jaxgpt.convert import from_nanogpt, to_nanogpt
from jaxgpt.model import (
    GPT,
    abstract_params,
    cross_entropy,
    stack_layers,
    unbox,
    unstack_layers,
)

WORKER = Path(__file__).with_name("scale_worker.py")
ROOT = Path(__file__).parent.parent


def run_worker(tmp: Path, *args: str, devices: int = 1, timeout: int = 600) -> subprocess.Popen:
    """Start scale_worker.py with `devices` simulated CPU devices (set before JAX starts)."""
    env = dict(os.environ)
    env.update(
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
        # identical programs compiled twice in one worker come from the cache
        JAX_COMPILATION_CACHE_DIR=str(tmp / "jax-cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    )
    return subprocess.Popen(
        [sys.executable, str(WORKER), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def result(proc: subprocess.Popen, out: Path, timeout: int = 600) -> dict:
    try:
        log, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        log, _ = proc.communicate()
        pytest.fail(f"worker timed out:\n{log[-3000:]}")
    assert proc.returncode == 0, log[-3000:]
    return json.loads(out.read_text())


def iter_losses(log: list[str]) -> dict[int, str]:
    """{iter: loss as printed} from nanoGPT's `iter N: loss X, ...` lines."""
    return {int(m[1]): m[2] for line in log if (m := re.match(r"iter (\d+): loss ([\d.]+)", line))}


@pytest.fixture(scope="module")
def parity(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("parity")
    return result(run_worker(tmp, "parity", str(tmp / "out.json"), devices=8), tmp / "out.json")


@pytest.mark.parametrize("strategy", ["data", "fsdp", "tensor"])
def test_sharded_step_equals_single_device_step(parity, strategy):
    """Train steps (dropout on) on 8 devices: the same losses as on one device, and after
    the first step the same parameters and Adam moments."""
    got = parity[strategy]
    assert parity["n_devices"] == 8
    np.testing.assert_allclose(got["losses"], parity["ref_losses"], atol=1e-5)
    assert got["params_diff"] < 1e-5, got["params_diff"]
    assert got["params_changed"] > 5e-5  # the step moved the parameters (lr = 1e-4)
    assert got["adam_rel_diff"] < 1e-4, got["adam_rel_diff"]


def test_fsdp_holds_an_eighth_of_every_large_parameter_and_moment(parity):
    params, adam = parity["fsdp"]["param_fractions"], parity["fsdp"]["adam_fractions"]
    assert len(params) == 10 and len(adam) == 2 * 10  # 2 x 4 kernels, wte, wpe; mu and nu
    assert set(params.values()) == {1 / 8}, params
    assert set(adam.values()) == {1 / 8}, adam
    # tensor parallel splits heads, MLP units and the vocabulary; wpe stays whole
    tensor = parity["tensor"]["param_fractions"]
    assert tensor.pop("['wpe']['embedding']") == 1.0
    assert set(tensor.values()) == {1 / 8}, tensor
    # data parallel replicates everything
    assert set(parity["data"]["param_fractions"].values()) == {1.0}


def test_mesh_errors_are_one_line(parity, capsys):
    cases = {
        "batch": "batch_size=12 is not divisible by the 8 data-parallel devices",
        "mesh": "mesh data=2 x fsdp=1 x tensor=2 needs 4 devices, but there are 8",
        "rest": "does not divide the 8 devices",
    }
    for name, fragment in cases.items():
        got = parity["cli"][name]
        assert got["code"] == 2 and got["stderr"].count("\n") == 1, got
        assert got["stderr"].startswith("jaxgpt: error: ") and fragment in got["stderr"], got
    # and on this process's single device
    assert cli.main(["train", "--mesh_data=2"]) == 2
    err = capsys.readouterr().err
    assert (
        err == "jaxgpt: error: mesh data=2 x fsdp=1 x tensor=1 needs 2 devices, but there are 1\n"
    )


def test_checkpoint_from_8_device_fsdp_resumes_on_2_and_1_devices(data_dir, tmp_path):
    """Train to step 10 under FSDP on 8 devices, then continue to 20 from that checkpoint on
    8, 2 and 1 devices: the restored state is bit-identical and the losses agree."""
    out8 = tmp_path / "ckpt"
    saved = result(
        run_worker(
            tmp_path, "save_resume", data_dir, str(out8), str(tmp_path / "8.json"), devices=8
        ),
        tmp_path / "8.json",
    )
    first, on8 = saved["first"], saved["continued"]
    assert first["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
    shutil.copytree(str(out8) + "-at10", tmp_path / "ckpt2")
    proc2 = run_worker(
        tmp_path, "resume", data_dir, str(tmp_path / "ckpt2"), str(tmp_path / "2.json"), devices=2
    )
    shutil.copytree(str(out8) + "-at10", tmp_path / "ckpt1")
    on1 = scale_worker._train(
        tiny_run(data_dir, str(tmp_path / "ckpt1"), init_from="resume", **scale_worker.RESUME)
    )
    on2 = result(proc2, tmp_path / "2.json")
    assert on2["mesh"] == {"data": 1, "fsdp": 2, "tensor": 1}
    for run in (on8, on2, on1):
        assert run["restored"] == first["final"]  # every byte of the state at step 10
        assert run["log"][0] == f"resuming from {run['log'][0].split()[2]} at iter 10"
        assert iter_losses(run["log"]) == iter_losses(on8["log"])  # iters 10..19, 4 decimals
        for split in ("train", "val"):
            assert run["losses"][split] == pytest.approx(on8["losses"][split], abs=1e-5)
    assert sorted(iter_losses(on8["log"])) == list(range(10, 20))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# a smaller model than the CPU config (4 layers, 128 embd, block 64), to keep the suite
# fast on a 2-core machine; the README gives the same check with the CPU config
HOSTS = dict(
    batch_size=12,
    block_size=32,
    n_layer=2,
    n_head=4,
    n_embd=64,
    dropout=0.0,
    max_iters=20,
    eval_interval=10,
    log_interval=1,
)


def test_two_processes_train_like_one(data_dir, tmp_path):
    """jax.distributed over 127.0.0.1, one CPU device per process, each reading its 6 rows
    of the 12-row global batch: the same losses as one process; only process 0 logs."""
    port, out_dir = free_port(), str(tmp_path / "two")
    procs = []
    for i in range(2):
        kw = dict(HOSTS, coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=i)
        args = ("host", data_dir, out_dir, json.dumps(kw), str(tmp_path / f"{i}.json"))
        procs.append(run_worker(tmp_path, *args))
    one = scale_worker._train(tiny_run(data_dir, str(tmp_path / "one"), **HOSTS))
    p0, p1 = (result(p, tmp_path / f"{i}.json") for i, p in enumerate(procs))
    assert (p0["process_count"], p0["process_index"], p1["process_index"]) == (2, 0, 1)
    assert p0["mesh"] == {"data": 2, "fsdp": 1, "tensor": 1}
    for split in ("train", "val"):
        assert p0["losses"][split] == pytest.approx(one["losses"][split], abs=1e-5)
        assert p1["losses"][split] == p0["losses"][split]
    assert p0["final"] == p1["final"]  # both processes hold the same parameters
    assert iter_losses(p0["log"]) == iter_losses(one["log"]) and len(iter_losses(one["log"])) == 20
    assert p1["log"] == []  # logging from process 0 only
    step, meta = checkpoint.restore_meta(out_dir)  # one checkpoint, written jointly
    assert step == 20 and meta["config"]["num_processes"] == 2


def test_bfloat16_tracks_float32(data_dir, tmp_path):
    """30 steps with bfloat16 compute stay within 2% of float32 (the README's 200-step
    run with the CPU config is the full check); params and Adam state stay float32."""
    kw = dict(max_iters=30, eval_interval=30, log_interval=1, dropout=0.0)
    f32 = scale_worker._train(tiny_run(data_dir, str(tmp_path / "f32"), **kw))
    bf16 = scale_worker._train(tiny_run(data_dir, str(tmp_path / "bf16"), dtype="bfloat16", **kw))
    assert bf16["state_dtypes"] == ["float32", "int32"]  # params, Adam moments; step counts
    a = {k: float(v) for k, v in iter_losses(f32["log"]).items()}
    b = {k: float(v) for k, v in iter_losses(bf16["log"]).items()}
    assert sorted(a) == sorted(b) == list(range(30))
    assert a[29] < a[0] - 0.5  # it learned
    for k in a:
        assert abs(b[k] - a[k]) / a[k] < 0.02, (k, a[k], b[k])
    assert bf16["losses"]["val"] == pytest.approx(f32["losses"]["val"], rel=0.02)
    assert bf16["final"] != f32["final"]  # the compute dtype did change the arithmetic


def test_bfloat16_keeps_norms_softmax_logits_and_loss_in_float32():
    cfg = GPTConfig(**{**TINY_MODEL.__dict__, "dtype": "bfloat16"})
    params = unbox(abstract_params(cfg))  # shapes only: tracing costs no compile
    idx = jnp.zeros((2, 16), jnp.int32)
    jaxpr = str(jax.make_jaxpr(lambda p: GPT(cfg).apply({"params": p}, idx))(params))
    L = cfg.n_layer
    assert len(re.findall(r"bf16\[2,16,3,2,16\] = dot_general", jaxpr)) == L  # qkv: bf16
    assert len(re.findall(r"f32\[2,16,1\] = rsqrt", jaxpr)) == 2 * L + 1  # LayerNorm stats
    assert len(re.findall(r"f32\[2,2,16,16\] = exp", jaxpr)) == L  # softmax (B, nh, T, T)
    logits = jax.eval_shape(lambda p: GPT(cfg).apply({"params": p}, idx), params)
    assert logits.dtype == jnp.float32
    loss = jax.eval_shape(lambda x: cross_entropy(x.astype(jnp.bfloat16), idx), logits)
    assert loss.dtype == jnp.float32


def test_attention_auto_picks_cudnn_only_on_gpu_in_half_precision(monkeypatch):
    assert ops.attention_impl("auto", "bfloat16", False) == "einsum"  # this CPU
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert ops.attention_impl("auto", "bfloat16", False) == "cudnn"
    assert ops.attention_impl("auto", "float16", False) == "cudnn"
    assert ops.attention_impl("auto", "float32", False) == "einsum"
    assert ops.attention_impl("auto", "bfloat16", True) == "einsum"  # attention dropout
    assert ops.attention_impl("xla", "float32", False) == "xla"


def test_block_inputs_carry_the_activation_sharding_constraint():
    params = unbox(abstract_params(TINY_MODEL))
    idx = jnp.zeros((2, 16), jnp.int32)

    def apply(p):
        return GPT(TINY_MODEL).apply({"params": p}, idx)

    assert "sharding_constraint" not in str(jax.make_jaxpr(apply)(params))
    with sharding.activate(sharding.make_mesh(TrainConfig())):
        jaxpr = str(jax.make_jaxpr(apply)(params))
    assert jaxpr.count("sharding_constraint") == TINY_MODEL.n_layer


def test_scanned_layers_convert_to_per_layer_names():
    rng = np.random.default_rng(0)  # random numpy weights: no init to compile
    params = jax.tree.map(
        lambda a: rng.normal(0.0, 0.1, a.shape).astype(np.float32),
        unbox(abstract_params(TINY_MODEL)),
    )
    scan_cfg = GPTConfig(**{**TINY_MODEL.__dict__, "scan_layers": True})
    stacked = stack_layers(params)
    shapes = jax.tree.map(lambda a: a.shape, unbox(abstract_params(scan_cfg)))
    assert jax.tree.map(lambda a: a.shape, stacked) == shapes  # the scan model's layout
    back = unstack_layers(stacked)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)
    idx = jax.random.randint(jax.random.key(1), (2, 16), 0, TINY_MODEL.vocab_size)
    logits = jax.jit(lambda cfg, p: GPT(cfg).apply({"params": p}, idx), static_argnums=0)
    np.testing.assert_allclose(logits(scan_cfg, stacked), logits(TINY_MODEL, params), atol=1e-5)
    # nanoGPT conversion both ways works from and to the stacked layout
    sd = to_nanogpt(stacked, scan_cfg)
    assert sd.keys() == to_nanogpt(params, TINY_MODEL).keys()
    again = from_nanogpt(sd, scan_cfg)
    for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(stacked)):
        np.testing.assert_allclose(a, b, rtol=0, atol=0)
