"""`--help` of the commands that take `--key=value` (train, bench): every config key with
its type, default, allowed values and a one-line description, in the groups of nanoGPT's
train.py.

All of it is read from config.py, so the help cannot drift from the code: the groups are
the comment lines inside TrainConfig (`# I/O`, `# adamw optimizer`, ...), a key's
description is the comment beside its field, and its allowed values are the RANGES and
CHOICES tables the checks use.
"""

import argparse
import dataclasses
import inspect
import io
import tokenize

from jaxgpt import config


class HELP_FORMAT(argparse.ArgumentDefaultsHelpFormatter):  # noqa: N801 (argparse's usage)
    """The argparse commands (sample, convert, ...): each option's help and its default,
    where it has one."""

    def _get_help_string(self, action):
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def field_comments(cls) -> list[tuple[str, str, str]]:
    """(group, field, description) of each field of the dataclass `cls`, in source order,
    from its comments: a comment on a line of its own opens a group, a comment after a
    field describes it."""
    names = {f.name for f in dataclasses.fields(cls)}
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):  # no source (a frozen build): names only
        return [("", name, "") for name in names]
    out, group, line_start, field = [], "", True, None
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            text = tok.string.lstrip("#").strip()
            if line_start:
                group = text
            elif field:
                out[-1] = (group, field, text)
        elif tok.type == tokenize.NAME and line_start and tok.string in names:
            field = tok.string
            out.append((group, field, ""))
        if tok.type in (tokenize.NEWLINE, tokenize.NL):
            line_start, field = True, None
        elif tok.type not in (tokenize.INDENT, tokenize.DEDENT, tokenize.COMMENT):
            line_start = False
    return out


def allowed(key: str) -> str:
    """What a key takes: its choices or range, as the checks word them."""
    if key in config.CHOICES:
        return " | ".join(config.CHOICES[key])
    if key in config.RANGES:
        return config.describe_range(config.RANGES[key])
    return ""


def keys_help(cls=config.TrainConfig) -> str:
    """The keys of `cls`, grouped: `  key  type  default  description (allowed)`."""
    types = {k: t.__name__ for k, t in config._field_types(cls).items()}
    defaults = config.to_dict(cls())
    rows, lines, group = field_comments(cls), [], None
    width = max(len(name) for _, name, _ in rows) + 2
    for g, name, text in rows:
        if g != group:
            lines += ["", f"{g}:" if g else "keys:"]
            group = g
        rule = allowed(name)
        text = f"{text} ({rule})" if rule and text else text or rule
        lines.append(f"  --{name:<{width}} {types[name]:<5}  {defaults[name]!r:<13}  {text}")
    return "\n".join(lines)


def wants_help(argv: list[str]) -> bool:
    return any(a in ("-h", "--help") for a in argv)
