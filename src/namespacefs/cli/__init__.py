"""The `nsfs` command: argument parsing only; each command group lives in its own module and
calls into the core. Modules are imported only when their command runs, so `nsfs ls` pays for
nothing else."""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from namespacefs.syntax import is_number, number

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


def whole(what: str, minimum: int = 0, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: a decimal number of ASCII digits in [minimum, maximum] (syntax.number)."""

    def parse(text: str) -> int:
        if not is_number(text):
            raise ValueError(text)  # argparse: "invalid int value: 'TEXT'", as for type=int
        try:
            return number(text, what, minimum, maximum)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__ = "int"  # what argparse names in its message
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="nsfs", description="See, name and act on every Linux namespace.")
    add_version(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text)
    return parser


def command_parser(name: str) -> argparse.ArgumentParser:
    """The whole parser of one command (what `nsfs NAME --help` shows; the man pages are made from it)."""
    module_name, help_text = COMMANDS[name]
    parser = Parser(prog=f"nsfs {name}", description=help_text)
    importlib.import_module(f"namespacefs.cli.{module_name}").add_arguments(parser, name)
    add_version(parser)
    return parser


class HelpLayout(argparse.HelpFormatter):
    """argparse's help layout, as wide as argparse makes it (shutil.get_terminal_size() less 2:
    $COLUMNS, else standard output's terminal, else 80), found without shutil: argparse makes a
    formatter for every add_argument() (to check its metavar), and shutil would bring its archive
    modules (bz2, lzma, fnmatch) into every command that prints no help at all."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position, _help_width() if width is None else width)


def _help_width() -> int:
    columns = os.environ.get("COLUMNS", "")
    if is_number(columns) and int(columns) > 0:
        return int(columns) - 2
    try:
        return (os.get_terminal_size(sys.__stdout__.fileno()).columns or 80) - 2  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):
        return 80 - 2


class Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line on stderr (`nsfs CMD: message (see nsfs CMD --help)`)
    and exit status 2, like any other error of the command line; help laid out by HelpLayout."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpLayout)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message} (see {self.prog} --help)", 2)


def one_line(text: object) -> str:
    """A message as one printable line: a message quoting what the user typed may hold newlines or
    control characters, and those would make a second line (or move the terminal's cursor)."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in str(text).replace("\n", " "))


#: Exit status of an error that was not foreseen (sysexits.h EX_SOFTWARE): still one line, no traceback.
INTERNAL_ERROR = 70


def main(argv: Sequence[str] | None = None) -> int:
    """The command line, behind its error boundary: the one place that turns every error into one
    line on stderr and an exit status. Nothing below it prints an error or exits on its own."""
    argv = list(sys.argv[1:] if argv is None else argv)
    name = argv[0] if argv and argv[0] in COMMANDS else "nsfs"
    prefix = "nsfs" if name == "nsfs" else f"nsfs {name}"
    try:
        return _main(argv)
    except UserError as e:
        print(f"{prefix}: {one_line(e)}", file=sys.stderr)
        return e.status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `nsfs ls | head`: the reader left, not an error. What is still buffered goes nowhere
        # (the recipe of the signal module's documentation), or the exit would fail on it.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except SystemExit as e:  # argparse's --help, or a library's exit: its status, never past main()
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except OSError as e:  # something of the host's that no command anticipated: still one line
        where = f"{os.fsdecode(e.filename)}: " if isinstance(e.filename, (str, bytes)) else ""
        print(f"{prefix}: {one_line(where)}{one_line(e.strerror or e)}", file=sys.stderr)
        return 1
    except (RecursionError, MemoryError) as e:
        print(f"{prefix}: the input is too large or too deeply nested ({type(e).__name__})", file=sys.stderr)
        return 1
    except Exception as e:  # a bug: one line that says so, not a traceback (NSFS_DEBUG=1 shows it)
        if isinstance(e, ImportError) and e.name == "namespacefs._walk":  # a broken install: how to mend it
            print(f"{prefix}: {one_line(e)}", file=sys.stderr)
            return 1
        if os.environ.get("NSFS_DEBUG"):
            raise
        print(f"{prefix}: internal error ({type(e).__name__}: {one_line(e)}); please report it with the command line",
              file=sys.stderr)
        return INTERNAL_ERROR


def _main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        if argv and not argv[0].startswith("-"):
            raise UserError(f"unknown command '{argv[0]}' (see nsfs --help)", 2)
        if not argv:
            argv = ["ls"]  # like lsns: no arguments lists the namespaces
        else:
            build_parser().parse_args(argv)  # --help / --version
            return 0
    name = argv[0]
    module = importlib.import_module(f"namespacefs.cli.{COMMANDS[name][0]}")
    parser = command_parser(name)
    if getattr(module, "INTERMIXED", False) and name != "rename":
        args = parser.parse_intermixed_args(argv[1:])  # options anywhere between the positionals
    else:
        args = parser.parse_args(argv[1:])
    args.command = name
    return int(module.run(args) or 0)


def entry() -> None:
    """The `nsfs` command."""
    sys.exit(main())


if __name__ == "__main__":
    entry()
