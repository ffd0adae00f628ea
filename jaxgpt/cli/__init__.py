"""The `jaxgpt` command: parses arguments and wires the package together, one module per
command (they parse and wire; the work is done in the package).

    jaxgpt prepare shakespeare_char|shakespeare|openwebtext [--input FILE] [--data_dir DIR]
    jaxgpt train [CONFIG.py] [--key=value ...]
    jaxgpt bench [CONFIG.py] [--key=value ...] [--compare=torch ...]
    jaxgpt sample --out_dir DIR [--start TEXT | --start FILE:path] [--num_samples N]
        [--stop TEXT] [--stop_token ID] [--kv_cache=False] ...
    jaxgpt convert --from {hf,nanogpt,jaxgpt} SRC --to {hf,nanogpt,jaxgpt} DST [--meta PATH]
    jaxgpt lecture [--stages 1-6] [--input FILE] [--max_iters N] ...
    jaxgpt plot OUT_DIR [OUT_DIR ...] [--output PNG]
    jaxgpt COMMAND --help                      # train/bench: every config key (keyhelp.py)

Exit status: 0 done (also after SIGTERM, checkpoint saved); 1 a run stopped by non-finite
losses; 2 a user mistake (a bad key, missing data, an unknown character, an out_dir in use
by another run); 74 (EX_IOERR) a checkpoint that could not be written (a full disk);
130 Ctrl-C, after saving its checkpoint. Every error is one line on stderr, no traceback.
Nothing heavy is imported before the command runs: `entry` first re-executes with
tcmalloc on a CPU (perf/cpu.py).
"""

import argparse
import sys

from jaxgpt.cli import bench, convert, lecture, plot, prepare, sample, train
from jaxgpt.config import ConfigError
from jaxgpt.data import DataError
from jaxgpt.perf import cpu
from jaxgpt.prep.tokenizer import TokenizerError
from jaxgpt.watch import faults
from jaxgpt.watch.lock import OutDirBusy

# train and bench take nanoGPT-style --key=value overrides, parsed by config.py
KEY_VALUE_COMMANDS = {"train": train, "bench": bench}
COMMANDS = {"prepare": prepare, "sample": sample, "convert": convert}
COMMANDS |= {"lecture": lecture, "plot": plot}


def user_errors() -> tuple:
    """Exceptions that mean bad input: one line, exit 2. Two live in modules that import
    JAX or orbax, hence imported only when an exception is being handled."""
    from jaxgpt.checkpoint import CheckpointError
    from jaxgpt.interop.bundle import ConvertError

    return (ConfigError, DataError, TokenizerError, CheckpointError, ConvertError, OutDirBusy)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxgpt", description="GPT in JAX, nanoGPT's way.")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (prepare, train, bench, sample, convert, lecture, plot):
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    with faults.held_orbax_logs() as orbax_logs:
        try:
            if argv and argv[0] in KEY_VALUE_COMMANDS:
                return KEY_VALUE_COMMANDS[argv[0]].run(argv[1:])
            args = parser.parse_args(argv)
            return COMMANDS[args.command].run(args)
        except user_errors() as e:
            orbax_logs.drop()
            print(f"jaxgpt: error: {e}", file=sys.stderr)
            return 2
        except faults.NonFiniteError as e:  # the run diverged: not the user's input, exit 1
            orbax_logs.drop()
            print(f"jaxgpt: error: {e}", file=sys.stderr)
            return 1
        except faults.SaveError as e:  # the disk, not the input: EX_IOERR
            orbax_logs.drop()
            print(f"jaxgpt: error: {e}", file=sys.stderr)
            return faults.EX_IOERR
        except KeyboardInterrupt:
            return 130


def entry() -> None:
    """The `jaxgpt` command and `python -m jaxgpt.cli`: on a CPU, re-execute with tcmalloc
    first (perf/cpu.py); this package imports nothing heavy before that."""
    cpu.use_tcmalloc()
    sys.exit(main())
