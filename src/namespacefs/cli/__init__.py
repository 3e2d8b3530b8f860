"""The `nsfs` command: argument parsing only; each command group lives in its own module and
calls into the core. Modules are imported only when their command runs, so `nsfs ls` pays for
nothing else."""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
from collections.abc import Sequence

#: command -> (module under namespacefs.cli, one-line help). Each module has
#: `add_arguments(parser, command)` and `run(args) -> int`; a module may serve several commands
#: (args.command tells which).
COMMANDS: dict[str, tuple[str, str]] = {
    "ls": ("ls", "list namespaces (like lsns)"),
    "tree": ("tree", "show the ownership (or pid) tree of namespaces"),
    "show": ("show", "show everything known about one namespace"),
    "rename": ("names", "give a namespace a name that is kept (unique in its owning user namespace)"),
    "names": ("names", "list names (--history, --prune), export and import them"),
    "accounting": ("accounting", "processes, limits and shared host ids per user namespace"),
    "shift": ("accounting", "shift ids of a tree: idmapped mount of SRC at DST (or --chown in place)"),
    "unshift": ("accounting", "remove an idmapped mount made by shift (or undo a --chown shift)"),
    "mount": ("mount", "mount the namespaces as a FUSE filesystem (default /run/namespacefs)"),
    "umount": ("mount", "unmount a namespacefs FUSE filesystem"),
    "serve": ("serve", "run the live service: HTTP API, events, metrics and a web page"),
    "watch": ("serve", "print namespace lifecycle events as they happen"),
    "containers": ("containers", "list containers as a tree, with who runs them (rename with --rename)"),
    "enter": ("containers", "run a command in a container's or process's namespaces (like nsenter)"),
    "kill": ("containers", "kill a container and every container nested in it"),
    "pin": ("containers", "keep a namespace alive with a bind mount of its file"),
    "unpin": ("containers", "remove a pin made by nsfs pin"),
    "checkpoint": ("containers", "save a container's namespaces, topology and names (and CRIU images)"),
    "restore": ("containers", "restore a checkpoint (CRIU where it can run) and re-apply its names"),
}


class UserError(Exception):
    """Bad input or an impossible request: printed as `nsfs: message`, exit status 1."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def duration(text: str) -> float:
    """argparse type: a finite number >= 0 ('nan' and 'inf' parse as floats but are no duration)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text}") from None
    if not 0 <= value < math.inf:  # also false for nan
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, not {text}")
    return value


def interval(text: str) -> float:
    """argparse type: a duration > 0 (a period to wait between two things)."""
    value = duration(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nsfs", description="See, name and act on every Linux namespace.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        if argv and not argv[0].startswith("-"):
            print(f"nsfs: unknown command '{argv[0]}' (see nsfs --help)", file=sys.stderr)
            return 2
        if not argv:
            argv = ["ls"]  # like lsns: no arguments lists the namespaces
        else:
            build_parser().parse_args(argv)  # --help / --version
            return 0
    name = argv[0]
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(f"namespacefs.cli.{module_name}")
    parser = argparse.ArgumentParser(prog=f"nsfs {name}", description=help_text)
    module.add_arguments(parser, name)
    args = parser.parse_args(argv[1:])
    args.command = name
    try:
        return int(module.run(args) or 0)
    except UserError as e:
        print(f"nsfs {name}: {e}", file=sys.stderr)
        return e.status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `nsfs ls | head`: the reader left, not an error. What is still buffered goes nowhere
        # (the recipe of the signal module's documentation), or the exit would fail on it.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def entry() -> None:
    """The `nsfs` command."""
    try:
        status = main()
    except ImportError as e:
        if e.name != "namespacefs._walk":
            raise
        print(f"nsfs: {e}", file=sys.stderr)  # a broken install, said in one line
        status = 1
    sys.exit(status)


if __name__ == "__main__":
    entry()
