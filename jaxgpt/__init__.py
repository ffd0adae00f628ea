"""jaxgpt: nanoGPT in JAX/Flax.

`jaxgpt.generate(params, config, prompt, ...)` samples text (see generation.py); it is
imported on first use, so `import jaxgpt` stays cheap.
"""

import importlib.util
import os

__version__ = "0.1.0"

# XLA:CPU options that make jaxgpt's train step faster on CPUs: oneDNN matmuls instead of
# YNNPACK fusions (6/6/384 block 256: 24.7-25.6 s -> 20.9-22.6 s per step, alternating
# runs; the CPU config unchanged; README, Performance). JAX reads XLA_FLAGS when it creates
# its backends, so they are added at `import jaxgpt`, only where no GPU/TPU plugin is
# installed, never over a value the user set, and not at all with JAXGPT_CPU_FLAGS=0.
CPU_XLA_FLAGS = ("--xla_cpu_use_onednn=true", "--xla_cpu_experimental_ynn_fusion_type=")
# GPU plugins install into the jax_plugins namespace; TPUs come with libtpu
_ACCELERATOR_PLUGINS = ("jax_plugins", "libtpu")


def _add_cpu_xla_flags() -> None:
    if os.environ.get("JAXGPT_CPU_FLAGS", "1") == "0":
        return
    if any(importlib.util.find_spec(p) for p in _ACCELERATOR_PLUGINS):
        return
    flags = os.environ.get("XLA_FLAGS", "")
    extra = [f for f in CPU_XLA_FLAGS if f.split("=")[0] not in flags]
    if extra:
        os.environ["XLA_FLAGS"] = " ".join([flags, *extra]).strip()


_add_cpu_xla_flags()

_LAZY = {"generate": "jaxgpt.generation", "Generation": "jaxgpt.generation"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'jaxgpt' has no attribute {name!r}")
