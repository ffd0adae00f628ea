"""Scaling out: sharded steps equal the single-device step, checkpoints move between meshes,
two processes train like one, bfloat16 tracks float32, scanned layers convert.

Training runs go to tests/scale_worker.py in subprocesses that see 8, 2 or 1 simulated
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
from conftest import TINY_MODEL

from jaxgpt import checkpoint, cli, ops, sharding
from jaxgpt.config import GPTConfig, TrainConfig
from jaxgpt.interop.statedict import from_nanogpt, to_nanogpt
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


def run_worker(tmp: Path, *args: str, devices: int = 1, xla_flags: str = "") -> subprocess.Popen:
    """Start scale_worker.py with `devices` simulated CPU devices (set before JAX starts)."""
    env = dict(os.environ)
    env.update(
        # LLVM optimisation off: these tiny programs compile ~2x faster, which is most of
        # what the workers do; every run that a test compares runs with the same flags
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} "
        f"--xla_backend_optimization_level=0 {xla_flags}",
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


def result(proc: subprocess.Popen, out: Path, timeout: int = 900) -> dict:
    """Wait for a worker and read its JSON; its output is shown if it failed."""
    try:
        log, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        log, _ = proc.communicate()
        pytest.fail(f"worker timed out:\n{log[-3000:]}")
    assert proc.returncode == 0, log[-3000:]
    return json.loads(out.read_text())


def iter_losses(log: list[str]) -> dict[int, float]:
    """{iter: loss} from nanoGPT's `iter N: loss X.XXXX, ...` lines."""
    return {
        int(m[1]): float(m[2])
        for line in log
        if (m := re.match(r"iter (\d+): loss ([\d.]+)", line))
    }


def assert_same_iter_losses(log: list[str], ref: list[str], iters: range) -> None:
    """The same loss at every iteration, up to the 4 printed decimals (runs on different
    meshes differ in the last float32 bits, which can flip the printed last digit)."""
    got, want = iter_losses(log), iter_losses(ref)
    assert sorted(got) == sorted(want) == list(iters)
    for it in iters:
        assert abs(got[it] - want[it]) <= 1.01e-4, (it, got[it], want[it])


@pytest.fixture(scope="module", autouse=True)
def eight_devices(tmp_path_factory, data_dir):
    """Start both 8-device workers at once: they run while the in-process tests do."""
    tmp = tmp_path_factory.mktemp("eight")
    ckpt = str(tmp / "ckpt")
    procs = {
        "parity": run_worker(tmp, "parity", str(tmp / "parity.json"), devices=8),
        "saved": run_worker(tmp, "save_resume", data_dir, ckpt, str(tmp / "saved.json"), devices=8),
    }
    yield tmp, procs
    for proc in procs.values():
        if proc.poll() is None:  # a deselected test's worker
            proc.kill()
            proc.communicate()


@pytest.fixture(scope="module")
def parity(eight_devices) -> dict:
    tmp, procs = eight_devices
    return result(procs["parity"], tmp / "parity.json")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# a smaller model than the CPU config (4 layers, 128 embd, block 64), to keep the suite
# fast on a 2-core machine; the README gives the same check with the CPU config
# XLA:CPU may keep float32 between fused bfloat16 ops; this makes it round like a GPU
BF16_STRICT = "--xla_allow_excess_precision=false"
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


@pytest.fixture(scope="module")
def hosts(data_dir, tmp_path_factory) -> dict:
    """Four HOSTS runs at once: processes 0 and 1 of a two-process run, and one process
    alone in float32 and in bfloat16 (rounded to bfloat16 after every op, as on a GPU)."""
    tmp = tmp_path_factory.mktemp("hosts")
    port = free_port()
    runs = {}
    for i in range(2):
        kw = dict(HOSTS, coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=i)
        runs[f"p{i}"] = (str(tmp / "two"), kw, "")
    runs["one"] = (str(tmp / "one"), HOSTS, "")
    runs["bf16"] = (str(tmp / "bf16"), dict(HOSTS, dtype="bfloat16"), BF16_STRICT)
    procs = {
        name: run_worker(
            tmp, "host", data_dir, out, json.dumps(kw), str(tmp / f"{name}.json"), xla_flags=f
        )
        for name, (out, kw, f) in runs.items()
    }
    return {name: result(proc, tmp / f"{name}.json") for name, proc in procs.items()} | {"tmp": tmp}


def test_two_processes_train_like_one(hosts):
    """jax.distributed over 127.0.0.1, one CPU device per process, each reading its 6 rows
    of the 12-row global batch: the same losses as one process; only process 0 logs."""
    p0, p1, one = hosts["p0"], hosts["p1"], hosts["one"]
    assert (p0["process_count"], p0["process_index"], p1["process_index"]) == (2, 0, 1)
    assert one["process_count"] == 1
    assert p0["mesh"] == {"data": 2, "fsdp": 1, "tensor": 1}
    for split in ("train", "val"):
        assert p0["losses"][split] == pytest.approx(one["losses"][split], abs=1e-5)
        assert p1["losses"][split] == p0["losses"][split]
    assert p0["final"] == p1["final"]  # both processes hold the same parameters
    assert_same_iter_losses(p0["log"], one["log"], range(20))
    assert p1["log"] == []  # logging from process 0 only
    step, meta = checkpoint.restore_meta(str(hosts["tmp"] / "two"))  # written jointly
    assert step == 20 and meta["config"]["num_processes"] == 2


def test_bfloat16_tracks_float32(hosts):
    """20 steps with bfloat16 compute stay within 2% of float32 (the README's 200-step
    run with the CPU config is the full check); params and Adam state stay float32."""
    f32, bf16 = hosts["one"], hosts["bf16"]
    assert bf16["state_dtypes"] == ["float32", "int32"]  # params, Adam moments; step counts
    a, b = iter_losses(f32["log"]), iter_losses(bf16["log"])
    assert sorted(a) == sorted(b) == list(range(20))
    assert a[19] < a[0] - 0.5  # it learned
    for k in a:
        assert abs(b[k] - a[k]) / a[k] < 0.02, (k, a[k], b[k])
    for split in ("train", "val"):
        assert bf16["losses"][split] == pytest.approx(f32["losses"][split], rel=0.02)
    assert bf16["final"] != f32["final"]  # bfloat16 did change the arithmetic


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
    """stack_layers gives the scan model's layout (test_model checks it computes the same
    function) and unstack_layers inverts it; nanoGPT conversion works from both."""
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
    # nanoGPT conversion both ways works from and to the stacked layout
    sd = to_nanogpt(stacked, scan_cfg)
    assert sd.keys() == to_nanogpt(params, TINY_MODEL).keys()
    again = from_nanogpt(sd, scan_cfg)
    for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(stacked)):
        np.testing.assert_array_equal(a, b)


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


@pytest.mark.parametrize("strategy", ["data", "fsdp", "tensor"])
def test_sharded_step_with_modern_blocks_equals_single_device_step(parity, strategy):
    """The same with rope, rmsnorm, swiglu, grouped-query attention, qk_norm, an untied
    head and soft-capping: their parameters carry logical axes like the rest."""
    modern = parity["modern"]
    got = modern[strategy]
    np.testing.assert_allclose(got["losses"], modern["ref_losses"], atol=1e-5)
    assert got["params_diff"] < 1e-5 and got["adam_rel_diff"] < 1e-4, got
    fractions = {k: v for k, v in got["param_fractions"].items() if "bias" not in k}
    if strategy == "fsdp":  # every weight matrix and embedding split along the embedding
        assert set(fractions.values()) == {1 / 8}, fractions
    if strategy == "tensor":  # the untied head along the vocabulary, MLP units, o heads
        assert fractions["['lm_head']['kernel']"] == 1 / 8
        assert fractions["['h_0']['mlp']['c_fc']['kernel']"] == 1 / 8
        assert fractions["['h_0']['attn']['c_proj']['kernel']"] == 1 / 8


def test_gradient_accumulation_under_fsdp_equals_big_batch(parity):
    """4 micro-batches of 8 rows on 8 FSDP devices = one step on the 32 rows, one device."""
    got = parity["accum"]
    assert got["loss_diff"] < 1e-5 and got["params_diff"] < 1e-5, got
    assert got["adam_rel_diff"] < 1e-4, got


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


def test_muon_state_is_sharded_like_the_parameters(parity):
    """optimizer=muon on 8 devices (data 2 x fsdp 2 x tensor 2): Muon's momentum of every
    block kernel is split as its kernel is (1/4: embedding and heads or MLP units), and the
    steps equal the single-device steps."""
    got = parity["muon"]
    loss_diff = max(abs(a - b) for a, b in zip(got["losses"], got["ref_losses"]))
    print(
        f"\nmuon on 8 devices vs 1: losses within {loss_diff:.1e}, params "
        f"{got['params_diff']:.1e}, momenta {got['mu_rel_diff']:.1e} relative"
    )
    kernels = {k: v for k, v in got["param_fractions"].items() if k.endswith("['kernel']")}
    assert len(kernels) == 8 and set(kernels.values()) == {1 / 4}, kernels
    assert got["mu_fractions"] == kernels
    np.testing.assert_allclose(got["losses"], got["ref_losses"], atol=1e-5)
    assert got["params_diff"] < 1e-5 and got["mu_rel_diff"] < 1e-4, got


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


def test_checkpoint_from_8_device_fsdp_resumes_on_2_and_1_devices(eight_devices, data_dir):
    """Train to step 10 under FSDP on 8 devices, then continue to 20 from that checkpoint on
    8, 2 and 1 devices: the restored state is bit-identical and the losses agree."""
    tmp, procs = eight_devices
    saved = result(procs["saved"], tmp / "saved.json")
    first, on8 = saved["first"], saved["continued"]
    assert first["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
    at10 = str(tmp / "ckpt") + "-at10"
    procs = {}
    for n in (2, 1):
        shutil.copytree(at10, tmp / f"ckpt{n}")
        args = ("resume", data_dir, str(tmp / f"ckpt{n}"), str(tmp / f"{n}.json"))
        procs[n] = run_worker(tmp, *args, devices=n)
    on2, on1 = (result(procs[n], tmp / f"{n}.json") for n in (2, 1))
    assert on2["mesh"] == {"data": 1, "fsdp": 2, "tensor": 1}
    assert on1["mesh"] == {"data": 1, "fsdp": 1, "tensor": 1}
    for run in (on8, on2, on1):
        assert run["restored"] == first["final"]  # every byte of the state at step 10
        assert run["log"][0].endswith("at iter 10") and run["log"][0].startswith("resuming")
        assert_same_iter_losses(run["log"], on8["log"], range(10, 20))
        for split in ("train", "val"):
            assert run["losses"][split] == pytest.approx(on8["losses"][split], abs=1e-5)
