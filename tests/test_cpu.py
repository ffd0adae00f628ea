"""CPU settings (cpu.py): XLA flags, and the `jaxgpt` command re-executing with tcmalloc."""

import json
import subprocess
import sys

import pytest
from cli_process import ROOT

from jaxgpt.perf import compare, cpu

TINY_BENCH = ["--n_layer=1", "--n_head=2", "--n_embd=16", "--block_size=8", "--batch_size=2"]
TINY_BENCH += ["--vocab_size=32", "--iters=2", "--warmup=1", "--json"]


def test_xla_flags_are_added_but_never_over_the_users():
    env = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_cpu_use_onednn=false"}
    cpu.add_xla_flags(env)
    flags = env["XLA_FLAGS"].split()
    assert "--xla_cpu_use_onednn=false" in flags and "--xla_cpu_use_onednn=true" not in flags
    assert any(f.startswith("--xla_cpu_experimental_ynn_fusion_type=") for f in flags)
    off = {"JAX_PLATFORMS": "cpu", "JAXGPT_CPU_FLAGS": "0"}
    cpu.add_xla_flags(off)
    assert "XLA_FLAGS" not in off


def test_allocator_choice():
    assert cpu.allocator_library({"JAXGPT_MALLOC": "system"}) is None
    assert cpu.allocator_library({"JAXGPT_MALLOC": "/opt/libmy.so"}) == "/opt/libmy.so"
    env = cpu.tcmalloc_env("libtcmalloc_minimal.so.4", {"LD_PRELOAD": "libother.so"})
    assert env["LD_PRELOAD"] == "libtcmalloc_minimal.so.4:libother.so"
    assert env["TCMALLOC_RELEASE_RATE"] == "0"
    assert cpu.preloaded("libtcmalloc_minimal.so.4", env)
    assert not cpu.preloaded("libtcmalloc_minimal.so.4", {"LD_PRELOAD": "libother.so"})
    assert cpu.tcmalloc_env("x.so", {"TCMALLOC_RELEASE_RATE": "5"})["TCMALLOC_RELEASE_RATE"] == "5"


def bench_allocator(env: dict) -> str:
    cmd = [sys.executable, "-m", "jaxgpt.cli", "bench", *TINY_BENCH]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])["allocator"]


def test_the_command_runs_with_tcmalloc_where_installed():
    library = cpu.allocator_library({})
    if library is None:
        pytest.skip("no tcmalloc on this machine (apt install libtcmalloc-minimal4)")
    env = {**compare.impl_env("torch"), "PYTHONPATH": ROOT}  # no tcmalloc inherited
    env.pop("JAXGPT_MALLOC")
    assert bench_allocator(env).startswith("tcmalloc")
    assert bench_allocator({**env, "JAXGPT_MALLOC": "system"}) == "system"


def test_torch_runs_with_the_allocator_its_label_says():
    env = {"LD_PRELOAD": "libtcmalloc_minimal.so.4:libother.so", "PATH": "/bin"}
    plain = compare.impl_env("torch", env)
    assert plain["LD_PRELOAD"] == "libother.so" and plain["JAXGPT_MALLOC"] == "system"
    assert plain["JAX_PLATFORMS"] == "cpu"
    same = compare.impl_env("torch+tcmalloc", env)
    assert same["LD_PRELOAD"] == env["LD_PRELOAD"] and "JAXGPT_MALLOC" not in same
    assert compare.impl_env("jax", env) == env
