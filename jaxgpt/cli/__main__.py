"""`python -m jaxgpt.cli`: the `jaxgpt` command."""

from jaxgpt.cli import entry

entry()
