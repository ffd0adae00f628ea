"""Model FLOPs utilisation: nanoGPT's FLOP estimate and the peak of the device.

MFU = achieved model FLOP/s over the device's peak in the compute dtype. Accelerator
peaks are the vendors' dense figures; a CPU or unknown device has no table entry, and
`measure_peak` times a large matmul in the same dtype instead.
"""

import time

import jax
import jax.numpy as jnp

from jaxgpt.config import GPTConfig

# dense peak FLOP/s by device kind substring: {dtype: flops}; float32 is the plain
# (non-TF32) rate, as XLA's default float32 matmul precision on GPU is "highest" only
# when asked for; quote bfloat16 for mixed-precision runs.
PEAK_FLOPS = {
    "H200": {"bfloat16": 989e12, "float16": 989e12, "float32": 67e12},
    "H100": {"bfloat16": 989e12, "float16": 989e12, "float32": 67e12},
    "A100": {"bfloat16": 312e12, "float16": 312e12, "float32": 19.5e12},
    "TPU v4": {"bfloat16": 275e12, "float32": 275e12 / 4},
    "TPU v5 lite": {"bfloat16": 197e12, "float32": 197e12 / 4},
    "TPU v5e": {"bfloat16": 197e12, "float32": 197e12 / 4},
    "TPU v5p": {"bfloat16": 459e12, "float32": 459e12 / 4},
    "TPU v5": {"bfloat16": 459e12, "float32": 459e12 / 4},
    "TPU v6 lite": {"bfloat16": 918e12, "float32": 918e12 / 4},
    "TPU v6e": {"bfloat16": 918e12, "float32": 918e12 / 4},
}


def flops_per_token(config: GPTConfig, n_params: int) -> int:
    """Training FLOPs per token, nanoGPT's estimate (PaLM appendix B): 6N + 12 L H Q T."""
    L, H, Q, T = config.n_layer, config.n_head, config.n_embd // config.n_head, config.block_size
    return 6 * n_params + 12 * L * H * Q * T


def table_peak(device: jax.Device, dtype: str) -> float | None:
    """The table's peak for this device and dtype, per device; None if unknown."""
    kind = device.device_kind
    for name, peaks in PEAK_FLOPS.items():
        if name.lower() in kind.lower():
            return peaks.get(dtype)
    return None


def measure_peak(dtype: str = "float32", n: int = 2048, iters: int = 10) -> float:
    """FLOP/s of an n x n matmul in `dtype` on the default device, the best of iters: on a
    shared machine a median moves with the neighbours' load (on the 2-core development
    machine 145-285 GFLOP/s between sittings), the best run is what the cores can do."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.dtype(dtype))
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / min(times)


def device_peak(dtype: str, measure: bool = False) -> tuple[float | None, str]:
    """(peak FLOP/s of all devices together, where the figure comes from)."""
    devices = jax.devices()
    peak = table_peak(devices[0], dtype)
    if peak is not None:
        return peak * len(devices), f"{devices[0].device_kind} {dtype} datasheet"
    if measure:
        return measure_peak(dtype), f"measured {dtype} 2048^3 matmul, best of 10"
    return None, "unknown peak"
