"""Multi-device and multi-process checks, run by test_scale.py in subprocesses.

Each command runs in a fresh interpreter whose device count was fixed before JAX was
imported (XLA_FLAGS=--xla_force_host_platform_device_count=N, set by the caller), and
writes what it measured as JSON to the last argument; test_scale.py asserts on it.

    python tests/scale_worker.py parity OUT.json            # 8 devices
    python tests/scale_worker.py save_resume DATA DIR OUT.json
    python tests/scale_worker.py resume DATA DIR OUT.json
    python tests/scale_worker.py host DATA DIR OVERRIDES_JSON OUT.json

`host` is one process of a multi-process run when OVERRIDES_JSON holds
coordinator_address/num_processes/process_id (it can be run by hand to repeat the
README's measurement with the full CPU config).
"""

import contextlib
import dataclasses
import hashlib
import io
import json
import shutil
import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))  # conftest's tiny_run

from conftest import tiny_run  # noqa: E402

from jaxgpt import cli, loop, sharding, train  # noqa: E402
from jaxgpt.config import TrainConfig  # noqa: E402

# parity model: 8 heads, a 4C hidden layer and a vocabulary that 8 devices split evenly.
# Adam moves every parameter by ~lr whatever its gradient's size, and for gradients near
# its eps (1e-8) it turns float32 rounding of the gradient into update differences of up
# to a few % of lr: lr = 1e-4 keeps those below the 1e-5 tolerance while a step moves the
# parameters 10x further. The gradients themselves are compared through Adam's moments.
PARITY = dict(
    batch_size=8,
    block_size=16,
    n_layer=2,
    n_head=8,
    n_embd=64,
    dropout=0.1,
    bias=True,
    learning_rate=1e-4,
    decay_lr=False,
    seed=7,
)
# the options after nanoGPT on the same meshes (4 key/value heads for 8 query heads)
MODERN = dict(
    pos_encoding="rope", norm="rmsnorm", mlp="swiglu", n_kv_head=4, qk_norm=True,
    tie_embeddings=False, logit_softcap=30.0,
)  # fmt: skip
MESHES = {
    "data": dict(mesh_data=8),
    "fsdp": dict(mesh_data=1, mesh_fsdp=8),
    "tensor": dict(mesh_data=1, mesh_tensor=8),
}
# every checkpoint of these runs: FSDP over 8 devices at first, restored anywhere
RESUME = dict(
    mesh_data=1, mesh_fsdp=-1, batch_size=8, log_interval=1, eval_interval=5, max_iters=20
)


def _diffs(a, b) -> dict:
    """{leaf path: max |a - b|}."""
    return {
        jax.tree_util.keystr(path): float(np.max(np.abs(np.asarray(x, np.float64) - y)))
        for (path, x), y in zip(
            jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b), strict=True
        )
    }


def _max_diff(a, b) -> float:
    return max(_diffs(a, b).values())


def _steps(cfg: TrainConfig, model_cfg, host_state, batches, devices):
    """Train steps on a mesh of `devices` from the same host state: the last state, a host
    copy of the state after the first step, and every step's loss."""
    mesh = sharding.make_mesh(cfg, devices)
    tx = train.make_optimizer(cfg)
    state = jax.device_put(host_state, train.state_shardings(model_cfg, tx, mesh))
    step = train.make_train_step(model_cfg, cfg, tx, mesh)
    losses, first = [], None
    for batch in batches:
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
        if first is None:  # the next step donates this state: copy it first
            first = jax.device_get(state)
    return state, first, losses


def _rel_diff(a, b) -> float:
    """Largest over leaves of max|a - b| / max|b|."""
    return max(
        float(np.max(np.abs(np.asarray(x) - np.asarray(y))) / max(np.max(np.abs(y)), 1e-30))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def _shard_fractions(tree) -> dict:
    """addressable shard size / global size of every large leaf (here: the weight matrices
    and embeddings; biases and LayerNorm parameters are < 512 entries)."""
    return {
        jax.tree_util.keystr(path): leaf.addressable_shards[0].data.size / leaf.size
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
        if leaf.size >= 512
    }


def _cli_error(argv: list[str]) -> dict:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return {"code": code, "stderr": err.getvalue()}


def parity(out: str) -> None:
    cfg = TrainConfig(**PARITY)
    model_cfg = cfg.model_config(vocab_size=32)
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 32, (1, cfg.batch_size, cfg.block_size + 1)) for _ in range(2)]
    one_device = jax.devices()[:1]
    one = sharding.make_mesh(dataclasses.replace(cfg, mesh_data=1), one_device)
    tx = train.make_optimizer(cfg)
    host_state = jax.device_get(train.create_state(model_cfg, tx, one, jax.random.key(0)))
    _, ref, ref_losses = _steps(
        dataclasses.replace(cfg, mesh_data=1), model_cfg, host_state, batches, one_device
    )
    result = {"ref_losses": ref_losses, "n_devices": jax.device_count()}
    for name, mesh_kw in MESHES.items():
        state, host, losses = _steps(
            dataclasses.replace(cfg, **mesh_kw), model_cfg, host_state, batches, jax.devices()
        )
        result[name] = {
            "losses": losses,
            "params_diff": _max_diff(host.params, ref.params),
            "adam_rel_diff": _rel_diff(host.opt_state, ref.opt_state),
            "params_changed": _max_diff(host.params, host_state.params),
            "param_fractions": _shard_fractions(state.params),
            "adam_fractions": _shard_fractions(state.opt_state),
        }
    result["modern"] = _modern_parity(cfg, batches)
    # gradient accumulation under FSDP: 4 x 8 rows on 8 devices vs 32 rows on one device
    # (without dropout, whose masks depend on the micro-step)
    big = rng.integers(0, 32, (1, 32, cfg.block_size + 1))
    no_dropout = dataclasses.replace(model_cfg, dropout=0.0)
    fsdp = dict(mesh_data=1, mesh_fsdp=8, gradient_accumulation_steps=4)
    _, acc, acc_loss = _steps(
        dataclasses.replace(cfg, **fsdp), no_dropout, host_state, [big.reshape(4, 8, -1)], None
    )  # None: all 8 devices
    _, one_big, big_loss = _steps(
        dataclasses.replace(cfg, mesh_data=1, batch_size=32),
        no_dropout,
        host_state,
        [big],
        one_device,
    )
    result["accum"] = {
        "loss_diff": abs(acc_loss[0] - big_loss[0]),
        "params_diff": _max_diff(acc.params, one_big.params),
        "adam_rel_diff": _rel_diff(acc.opt_state, one_big.opt_state),
    }
    result["muon"] = _muon_parity(cfg, model_cfg, batches, one_device)
    data = ["--data_dir=/nonexistent", "--dataset=none"]
    result["cli"] = {
        "batch": _cli_error(["train", *data, "--batch_size=12", "--mesh_fsdp=8", "--mesh_data=1"]),
        "mesh": _cli_error(["train", *data, "--mesh_data=2", "--mesh_tensor=2"]),
        "rest": _cli_error(["train", *data, "--mesh_tensor=3"]),
    }
    Path(out).write_text(json.dumps(result))


def _modern_parity(cfg: TrainConfig, batches) -> dict:
    """parity's mesh checks with the MODERN options: {mesh: diffs against one device}."""
    cfg = dataclasses.replace(cfg, **MODERN)
    model_cfg = cfg.model_config(vocab_size=32)
    one_device = jax.devices()[:1]
    one = sharding.make_mesh(dataclasses.replace(cfg, mesh_data=1), one_device)
    tx = train.make_optimizer(cfg)
    host_state = jax.device_get(train.create_state(model_cfg, tx, one, jax.random.key(0)))
    single = dataclasses.replace(cfg, mesh_data=1)
    _, ref, ref_losses = _steps(single, model_cfg, host_state, batches, one_device)
    out = {"ref_losses": ref_losses}
    for name, mesh_kw in MESHES.items():
        mesh_cfg = dataclasses.replace(cfg, **mesh_kw)
        state, host, losses = _steps(mesh_cfg, model_cfg, host_state, batches, jax.devices())
        out[name] = {
            "losses": losses,
            "params_diff": _max_diff(host.params, ref.params),
            "adam_rel_diff": _rel_diff(host.opt_state, ref.opt_state),
            "param_fractions": _shard_fractions(state.params),
        }
    return out


def _muon_parity(cfg: TrainConfig, model_cfg, batches, one_device) -> dict:
    """optimizer=muon on a data 2 x fsdp 2 x tensor 2 mesh against one device: losses,
    parameters, Muon's momentum, and the shard fractions of parameters and momenta."""
    cfg = dataclasses.replace(cfg, optimizer="muon")
    one = dataclasses.replace(cfg, mesh_data=1)
    tx = train.make_optimizer(cfg)
    mesh = sharding.make_mesh(one, one_device)
    host_state = jax.device_get(train.create_state(model_cfg, tx, mesh, jax.random.key(0)))
    _, ref, ref_losses = _steps(one, model_cfg, host_state, batches, one_device)
    mixed = dataclasses.replace(cfg, mesh_data=2, mesh_fsdp=2, mesh_tensor=2)
    state, host, losses = _steps(mixed, model_cfg, host_state, batches, jax.devices())

    def momenta(opt_state) -> dict:  # {parameter path: Muon's mu}
        leaves = jax.tree_util.tree_leaves_with_path(opt_state)
        keys = [(jax.tree_util.keystr(p), x) for p, x in leaves]
        return {k.split(".mu", 1)[1]: x for k, x in keys if "['muon']" in k and ".mu[" in k}

    return {
        "losses": losses,
        "ref_losses": ref_losses,
        "params_diff": _max_diff(host.params, ref.params),
        "mu_rel_diff": _rel_diff(momenta(host.opt_state), momenta(ref.opt_state)),
        "param_fractions": _shard_fractions(state.params),
        "mu_fractions": {
            k: x.addressable_shards[0].data.size / x.size
            for k, x in momenta(state.opt_state).items()
        },
    }


def _fingerprint(state) -> str:
    """A hash of every byte of the (gathered) state: equal only for identical states."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(jax.device_get(state)):
        h.update(np.asarray(leaf).tobytes())
    return h.hexdigest()


def _train(cfg: TrainConfig) -> dict:
    """loop.setup + train_loop, capturing the log lines process 0 prints."""
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        run = loop.setup(cfg)
        restored = _fingerprint(run.state) if cfg.init_from == "resume" else None
        losses = loop.train_loop(run)
    return {
        "losses": losses,
        "restored": restored,
        "final": _fingerprint(run.state),
        "log": stdout.getvalue().splitlines(),
        "mesh": dict(run.mesh.shape),
        "state_dtypes": sorted({str(x.dtype) for x in jax.tree.leaves(run.state)}),
    }


def resume(data_dir: str, out_dir: str, out: str) -> None:
    """Continue the checkpoint in out_dir to step 20 on this process's devices."""
    cfg = tiny_run(data_dir, out_dir, init_from="resume", **RESUME)
    Path(out).write_text(json.dumps(_train(cfg)))


def save_resume(data_dir: str, out_dir: str, out: str) -> None:
    """Train to 10 under FSDP (checkpoint), keep a copy, and continue it to step 20."""
    first = _train(tiny_run(data_dir, out_dir, **{**RESUME, "max_iters": 10}))
    shutil.copytree(out_dir, out_dir + "-at10")
    cont = _train(tiny_run(data_dir, out_dir, init_from="resume", **RESUME))
    Path(out).write_text(json.dumps({"first": first, "continued": cont}))


def host(data_dir: str, out_dir: str, overrides: str, out: str) -> None:
    """One process of a (possibly multi-process) run; see test_scale.py."""
    result = _train(tiny_run(data_dir, out_dir, **json.loads(overrides)))
    result.update(process_index=jax.process_index(), process_count=jax.process_count())
    Path(out).write_text(json.dumps(result))


if __name__ == "__main__":
    commands = {"parity": parity, "resume": resume, "save_resume": save_resume, "host": host}
    commands[sys.argv[1]](*sys.argv[2:])
