"""Device mesh and sharding rules: one train step from 1 CPU to a pod slice.

The mesh has three named axes, sized by the config keys mesh_data, mesh_fsdp and
mesh_tensor (-1: all remaining devices). Parameters and activations carry logical axis
names (model.py); the table RULES maps them onto the mesh, so the strategy is chosen by
the mesh shape alone:

- data parallel (mesh_data=N): batch split over devices, parameters replicated;
- FSDP / ZeRO-3 (mesh_fsdp=N): batch split too, and every parameter and its Adam moments
  sharded along the embedding axis; XLA gathers each layer's weights when it needs them;
- tensor parallel (mesh_tensor=N): attention heads, MLP hidden units and the vocabulary
  split over devices (Megatron style), activations replicated across the group.

A dimension that a mesh axis does not divide stays unsharded (e.g. a 65-symbol vocabulary
on 2 tensor devices), so every config runs on every mesh.
"""

import contextlib
import math
import os

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxgpt.config import ConfigError, TrainConfig
from jaxgpt.model import unbox

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the batch is split over both

RULES = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("kv", None),
    ("layers", None),
    ("length", None),
    ("act_embed", None),
)


def mesh_shape(cfg: TrainConfig, n_devices: int) -> tuple[int, int, int]:
    """Resolve mesh_data/mesh_fsdp/mesh_tensor (-1 = the rest) against the device count."""
    sizes = [cfg.mesh_data, cfg.mesh_fsdp, cfg.mesh_tensor]
    if sizes.count(-1) > 1:
        raise ConfigError("at most one of mesh_data, mesh_fsdp, mesh_tensor may be -1")
    if any(s == 0 or s < -1 for s in sizes):
        raise ConfigError(f"mesh sizes must be >= 1 or -1, got {tuple(sizes)}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if n_devices % known:
            raise ConfigError(f"mesh {tuple(sizes)} does not divide the {n_devices} devices")
        sizes[sizes.index(-1)] = n_devices // known
    if math.prod(sizes) != n_devices:
        raise ConfigError(
            f"mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} needs "
            f"{math.prod(sizes)} devices, but there are {n_devices}"
        )
    return tuple(sizes)


def make_mesh(cfg: TrainConfig, devices=None) -> jax.sharding.Mesh:
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(cfg, len(devices))
    auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    return jax.make_mesh(shape, MESH_AXES, axis_types=auto, devices=devices)


def check_batch(cfg: TrainConfig, mesh: jax.sharding.Mesh) -> None:
    n = math.prod(mesh.shape[a] for a in BATCH_AXES)
    if cfg.batch_size % n:
        raise ConfigError(
            f"batch_size={cfg.batch_size} is not divisible by the {n} data-parallel devices "
            f"(mesh_data x mesh_fsdp)"
        )


def _fit(spec: P, shape: tuple, mesh: jax.sharding.Mesh) -> P:
    """Drop mesh axes that do not divide their dimension (the dimension stays whole)."""
    out = []
    padded = tuple(spec) + (None,) * (len(shape) - len(spec))
    for dim, axes in zip(shape, padded, strict=True):
        names = (axes,) if isinstance(axes, str) else (axes or ())
        names = tuple(a for a in names if mesh.shape[a] > 1)
        size = math.prod(mesh.shape[a] for a in names)
        out.append(None if not names or dim % size else (names if len(names) > 1 else names[0]))
    return P(*out)


def logical_sharding(boxed_tree, mesh: jax.sharding.Mesh):
    """NamedShardings for a tree of nn.LogicallyPartitioned (abstract) values."""
    specs = nn.get_partition_spec(boxed_tree)
    unboxed = unbox(boxed_tree)

    def one(spec, leaf):
        mesh_spec = nn.logical_to_mesh_axes(spec, RULES) if spec is not None else P()
        return NamedSharding(mesh, _fit(mesh_spec, leaf.shape, mesh))

    return jax.tree.map(one, specs, unboxed, is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh: jax.sharding.Mesh, ndim: int, batch_dim: int = 0) -> NamedSharding:
    spec = [None] * ndim
    spec[batch_dim] = BATCH_AXES
    return NamedSharding(mesh, P(*spec))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


@contextlib.contextmanager
def activate(mesh: jax.sharding.Mesh):
    """Mesh and logical rules in scope, for tracing the model's activation constraints."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
        yield


def global_batch(local: np.ndarray, sharding: NamedSharding, global_shape: tuple) -> jax.Array:
    """A global array from this process's rows (jax.make_array_from_process_local_data)."""
    return jax.make_array_from_process_local_data(sharding, local, global_shape)


def process_rows(global_batch_size: int, batch_dim_sharding: NamedSharding) -> slice:
    """The rows of the global batch that live on this process's devices."""
    if jax.process_count() == 1:
        return slice(None)
    index_map = batch_dim_sharding.addressable_devices_indices_map((global_batch_size,))
    starts = sorted({idx[0].start or 0 for idx in index_map.values()})
    stops = sorted({idx[0].stop or global_batch_size for idx in index_map.values()})
    return slice(starts[0], stops[-1])


def _multi_host_environment() -> bool:
    """True on a multi-worker TPU VM slice or inside a multi-task SLURM job."""
    if "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""):
        return True
    return int(os.environ.get("SLURM_NTASKS", "1")) > 1


def init_distributed(cfg: TrainConfig) -> None:
    """jax.distributed.initialize when this run spans several processes.

    Explicit with coordinator_address/num_processes/process_id, else auto-detected on TPU
    VM slices and SLURM (JAX reads their environment). Safe to call twice.
    """
    if jax.distributed.is_initialized():
        return
    if cfg.coordinator_address:
        if cfg.num_processes < 1 or cfg.process_id < 0:
            raise ConfigError("coordinator_address needs num_processes and process_id")
        jax.distributed.initialize(
            coordinator_address=cfg.coordinator_address,
            num_processes=cfg.num_processes,
            process_id=cfg.process_id,
        )
    elif _multi_host_environment():
        jax.distributed.initialize()
