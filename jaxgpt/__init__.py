"""jaxgpt: nanoGPT in JAX/Flax.

`jaxgpt.generate(params, config, prompt, ...)` samples text (see generation.py); it is
imported on first use, so `import jaxgpt` stays cheap.
"""

from jaxgpt.perf import cpu

__version__ = "0.1.0"

# XLA reads XLA_FLAGS when JAX creates its backends: set the CPU options now (perf/cpu.py)
cpu.add_xla_flags()

_LAZY = {"generate": "jaxgpt.generation", "Generation": "jaxgpt.generation"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'jaxgpt' has no attribute {name!r}")
