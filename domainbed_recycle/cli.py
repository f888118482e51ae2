"""`drecycle` command line: one subcommand per module in `domainbed_recycle.commands`.

Each command module defines `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`,
and keeps heavy imports (torch, pandas) inside `run`, so `drecycle --help` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import sys
from typing import NoReturn

from domainbed_recycle.errors import UserError, os_error_line

# subcommand name -> module under domainbed_recycle.commands
COMMANDS = {
    "train": "train",
    "data": "data",
    "sweep": "sweep",
    "collect": "collect",
    "recycle": "recycle",
    "import": "import_ckpt",
    "diversity": "diversity",
    "lmc": "lmc",
    "merge": "merge",
}


def _load_commands() -> dict:
    return {name: importlib.import_module(f"domainbed_recycle.commands.{module}") for name, module in COMMANDS.items()}


def _version() -> str:
    try:
        return importlib.metadata.version("domainbed-recycle")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown (not installed)"


class _Parser(argparse.ArgumentParser):
    """argparse, with a mistake in the flags told in one line (and where the flags are listed)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (flags: {self.prog} --help)\n")


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    modules = _load_commands()
    parser = _Parser(
        prog="drecycle", description="DomainBed-style benchmark harness for model recycling."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module in modules.items():
        command_parser = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command_parser)
    return parser, modules


def _error_line(text: str) -> None:
    """Print `text` on stderr whatever it quotes (a lone surrogate read from a spec is escaped, not a crash)."""
    print(text.encode("utf-8", "backslashreplace").decode("utf-8"), file=sys.stderr)


def _tolerant_output() -> None:
    """Let stdout and stderr print any path: one that is no valid UTF-8 (a byte such as 0xff in a file
    name reaches Python as a lone surrogate) is shown escaped (\\udcff) instead of crashing the
    command after its work is done."""
    for stream in (sys.stdout, sys.stderr):
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def main(argv: list[str] | None = None) -> int:
    _tolerant_output()
    parser, modules = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # a mistake in the flags (one line printed), or --help / --version
        return stop.code if isinstance(stop.code, int) else 0
    try:
        return int(modules[args.command].run(args) or 0)
    except UserError as error:
        _error_line(f"drecycle {args.command}: error: {error}")
        return 2
    except OSError as error:  # disk full, read-only, not a directory: the path and the reason
        _error_line(f"drecycle {args.command}: error: {os_error_line(error)}")
        return 2
    except KeyboardInterrupt:
        print(f"drecycle {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
