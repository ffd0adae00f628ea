"""How a jaxgpt process runs on a CPU: XLA:CPU flags and the memory allocator.

Both must be chosen before the work starts, so they are applied early and only where the
computation runs on the CPU (no GPU/TPU plugin installed, or JAX_PLATFORMS=cpu):

- XLA flags (`add_xla_flags`, called at `import jaxgpt`, before JAX creates its
  backends): never over a flag the user set in XLA_FLAGS; JAXGPT_CPU_FLAGS=0 turns them off.
- tcmalloc (`use_tcmalloc`, called by the `jaxgpt` command before it imports JAX).
  XLA:CPU allocates the buffers of a compiled step anew at every call. glibc's malloc hands
  out the large ones as fresh mmap'd pages and unmaps them again on free, so every step
  page-faults its way through all of its temporaries (6/6/384 block 256 batch 64: 6.7M
  faults in 7 steps, against 1.2M with tcmalloc, which keeps freed memory for reuse). An
  allocator is picked when a program starts (LD_PRELOAD), so the command re-executes
  itself once with tcmalloc preloaded when one is installed (Debian/Ubuntu:
  `apt install libtcmalloc-minimal4`). JAXGPT_MALLOC=system keeps the C library's
  malloc; JAXGPT_MALLOC=PATH preloads that library instead.
"""

import ctypes.util
import importlib.util
import os
import sys

# oneDNN matmuls, YNNPACK reductions (XLA:CPU's default also sends dots to YNNPACK);
# measured against the alternatives in the README's Performance section
XLA_FLAGS = (
    "--xla_cpu_use_onednn=true",
    "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_REDUCE",
)
# GPU plugins install into the jax_plugins namespace; TPUs come with libtpu
_ACCELERATOR_PLUGINS = ("jax_plugins", "libtpu")
TCMALLOC = ("tcmalloc_minimal", "tcmalloc")  # library names, tried in this order
# tcmalloc settings unless the environment has them: keep freed pages (no gradual return
# to the OS) and do not print a line for every allocation above 1 GB
TCMALLOC_ENV = {
    "TCMALLOC_RELEASE_RATE": "0",
    "TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 50),
}


def cpu_only(env=os.environ) -> bool:
    """True when JAX will compute on the CPU: JAX_PLATFORMS=cpu, or no accelerator plugin."""
    if env.get("JAX_PLATFORMS", "").split(",")[0] == "cpu":
        return True
    return not any(importlib.util.find_spec(p) for p in _ACCELERATOR_PLUGINS)


def add_xla_flags(env=os.environ) -> None:
    """Add XLA_FLAGS' CPU options to env, keeping every flag already set there."""
    if env.get("JAXGPT_CPU_FLAGS", "1") == "0" or not cpu_only(env):
        return
    flags = env.get("XLA_FLAGS", "")
    extra = [f for f in XLA_FLAGS if f.split("=")[0] not in flags]
    if extra:
        env["XLA_FLAGS"] = " ".join([flags, *extra]).strip()


def allocator_library(env=os.environ) -> str | None:
    """The allocator to preload: JAXGPT_MALLOC's path, or an installed tcmalloc, or None
    (JAXGPT_MALLOC=system, or no tcmalloc on this machine)."""
    choice = env.get("JAXGPT_MALLOC", "tcmalloc")
    if choice == "system":
        return None
    if choice != "tcmalloc":
        return choice
    return next(filter(None, (ctypes.util.find_library(name) for name in TCMALLOC)), None)


def preloaded(library: str, env=os.environ) -> bool:
    name = os.path.basename(library).split(".so")[0]
    return any(name in os.path.basename(p) for p in env.get("LD_PRELOAD", "").split(":") if p)


def tcmalloc_env(library: str, env=os.environ) -> dict:
    """env with the library first in LD_PRELOAD and tcmalloc's settings added."""
    new = {**TCMALLOC_ENV, **env}
    new["LD_PRELOAD"] = ":".join(p for p in (library, env.get("LD_PRELOAD", "")) if p)
    return new


def use_tcmalloc() -> None:
    """Re-execute this process (same PID, same arguments) with tcmalloc preloaded, if it
    computes on the CPU, runs on Linux, has an allocator to preload and has not yet."""
    if not sys.platform.startswith("linux") or not cpu_only():
        return
    library = allocator_library()
    if library is None or preloaded(library):
        return
    try:
        os.execve(sys.executable, sys.orig_argv, tcmalloc_env(library))
    except OSError as e:  # keep going with the C library's malloc
        print(f"jaxgpt: note: could not preload {library} ({e})", file=sys.stderr)


def allocator_in_use() -> str:
    """The malloc this process runs with: the preloaded library's name, or "system"."""
    try:
        with open("/proc/self/maps") as f:
            maps = f.read()
    except OSError:
        return "system"
    libs = {os.path.basename(line.split()[-1]) for line in maps.splitlines() if "malloc" in line}
    return next((lib.split(".so")[0].removeprefix("lib") for lib in sorted(libs)), "system")
