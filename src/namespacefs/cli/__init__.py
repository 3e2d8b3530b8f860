"""The `nsfs` command: argument parsing only; each command group lives in its own module and
calls into the core. Modules are imported only when their command runs, so `nsfs ls` pays for
nothing else."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import gc
import importlib
import math
import os
import sys
import threading
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


class VersionAction(argparse.Action):
    """-V/--version: print the installed version and exit. The version is looked up only when asked
    (package metadata costs imports every other command would pay)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **_kwargs: object) -> None:
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0,
                         help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        import namespacefs

        print(f"nsfs from namespacefs {namespacefs.__version__}")
        parser.exit()


def add_version(parser: argparse.ArgumentParser) -> None:
    """-V and --version on a parser, those of the two that its command does not use otherwise."""
    free = [flag for flag in ("-V", "--version") if flag not in parser._option_string_actions]
    if free:
        parser.add_argument(*free, action=VersionAction)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nsfs", description="See, name and act on every Linux namespace.")
    add_version(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text)
    return parser


def command_parser(name: str) -> argparse.ArgumentParser:
    """The whole parser of one command (what `nsfs NAME --help` shows; the man pages are made from it)."""
    module_name, help_text = COMMANDS[name]
    parser = argparse.ArgumentParser(prog=f"nsfs {name}", description=help_text)
    importlib.import_module(f"namespacefs.cli.{module_name}").add_arguments(parser, name)
    add_version(parser)
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
    module = importlib.import_module(f"namespacefs.cli.{COMMANDS[name][0]}")
    args = command_parser(name).parse_args(argv[1:])
    args.command = name
    one_shot = not getattr(module, "KEEPS_RUNNING", False)
    if one_shot:
        # a one-shot command builds its snapshot and exits: the cyclic collector would only walk
        # those objects over and over (~10 ms of `nsfs ls` at 1,000 processes, in each of its two
        # readers); reference counting still frees everything that is dropped
        gc.disable()
    try:
        return int(module.run(args) or 0)
    except UserError as e:
        print(f"nsfs {name}: {e}", file=sys.stderr)
        return e.status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        sys.stderr.close()  # `nsfs ls | head`: the reader left, not an error
        return 0
    finally:
        if one_shot:
            gc.enable()


def entry() -> None:
    """The `nsfs` command: main(), then exit without tearing the heap down object by object, which
    takes ~13 ms after a scan of 1,000 processes. Everything an ordinary exit does that matters
    still happens first: atexit handlers (logging's flush among them) and flushing stdio. A
    process with other threads exits the ordinary way (it would wait for them), and so does one
    that a profiler or a tracer (pyinstrument, coverage) watches: it reports after main returns."""
    status = main()
    if threading.active_count() > 1 or sys.getprofile() is not None or sys.gettrace() is not None:
        sys.exit(status)
    atexit._run_exitfuncs()  # what interpreter shutdown runs first (CPython's, stable since 2.x)
    with contextlib.suppress(OSError, ValueError):  # a reader that left (`nsfs ls | head`) is no error
        sys.stdout.flush()
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    entry()
