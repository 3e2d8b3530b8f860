"""Options and helpers shared by the commands that work on a snapshot. Importing it costs no
model, discovery or kernel layer: `nsfs ls` printed by a daemon uses only its options."""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import sys
from functools import cache
from typing import TYPE_CHECKING, TextIO

from namespacefs.cli import UserError
from namespacefs.kinds import NS_TYPES, SOURCES

if TYPE_CHECKING:  # (the model is imported by what takes a snapshot: a command the daemon prints needs none)
    from namespacefs.model import Namespace, Snapshot


def add_source_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sources", metavar="LIST",
        help=f"discovery sources to use (default: all of {','.join(SOURCES)}); --sources=-LIST leaves some out")
    with contextlib.suppress(argparse.ArgumentError):  # (a command may have a -v of its own)
        parser.add_argument("-v", "--verbose", action="store_true",
                            help="name each entry that could not be read (pid, path and reason), on stderr")
    with contextlib.suppress(argparse.ArgumentError):  # (a command may already have its own --db)
        parser.add_argument("--db", metavar="PATH", default=os.environ.get("NSFS_DB") or None,
                            help="the names database (default: $NSFS_DB, else /var/lib/namespacefs/names.db)")


def version_string() -> str:
    """What `nsfs --version`, `nsfs ls -V` and `nsfs enter -V` print (as lsns -V and nsenter -V do)."""
    import namespacefs

    found = getattr(namespacefs, "__version__", None)
    if found is None:
        from importlib.metadata import version

        found = version("namespacefs")
    return f"nsfs from namespacefs {found}"


class PrintVersion(argparse.Action):
    """-V/--version of a command: print version_string() and exit."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **_kw: object) -> None:
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0,
                         help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        print(version_string())
        parser.exit()


def chosen_sources(spec: str | None) -> tuple[str, ...]:
    if not spec:
        return SOURCES
    drop = spec.startswith("-")
    names = [s.strip() for s in spec.lstrip("-").split(",") if s.strip()]
    unknown = [s for s in names if s not in SOURCES]
    if unknown:
        raise UserError(f"unknown source: {', '.join(unknown)} (known: {', '.join(SOURCES)})")
    return tuple(s for s in SOURCES if (s not in names) == drop)


def daemon_snapshot() -> Snapshot | None:
    """The running daemon's live snapshot (`nsfs serve`), None when none answers: the provider the
    CLI gives core.snapshot. No daemon costs one connect() to its socket."""
    from namespacefs.service.client import fetch_snapshot

    return fetch_snapshot(timeout=2.0)


def take_snapshot(args: argparse.Namespace, daemon: bool = True) -> Snapshot:
    """The command's snapshot: the running daemon's where it may be used (daemon=False: one known
    not to answer), else a scan of our own, named."""
    from namespacefs import core  # (here: a command the daemon prints, cli.remote, never scans)

    verbose_scan(args)
    return core.snapshot(chosen_sources(getattr(args, "sources", None)), db=getattr(args, "db", None),
                         fresh=bool(getattr(args, "verbose", False)), provider=daemon_snapshot if daemon else None)


def ns_type(text: str) -> str:
    """argparse type for -t TYPE."""
    if text not in NS_TYPES:
        raise argparse.ArgumentTypeError(f"unknown namespace type '{text}' (one of {', '.join(NS_TYPES)})")
    return text


def find(snapshot: Snapshot, spec: str, nstype: str | None = None) -> Namespace:
    from namespacefs import targets

    try:
        return targets.resolve(snapshot, spec, nstype)
    except targets.NotFound as e:
        raise UserError(str(e)) from None


@cache
def user_name(uid: int | None) -> str:
    if uid is None:
        return ""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def report_errors(snapshot: Snapshot, out: TextIO | None = None) -> None:
    """Say, on stderr, what could not be read, so a partial answer is never mistaken for a whole one
    (with -v/--verbose the scan has named each entry as it met it: see verbose_scan)."""
    from namespacefs.discover import state

    denied, protected = snapshot.errors.get("denied", 0), snapshot.errors.get("protected", 0)
    more = "" if state.REPORT_TO is not None else "; -v names each"
    if denied:
        what = "entry" if denied == 1 else "entries"
        print(f"nsfs: {denied} {what} could not be read (permission denied; run as root to see everything{more})",
              file=out or sys.stderr)
    if protected:
        what = "entry" if protected == 1 else "entries"
        print(f"nsfs: {protected} {what} could not be read even as root (protected by the kernel or a security "
              f"module{more})", file=out or sys.stderr)


def verbose_scan(args: argparse.Namespace) -> None:
    """-v/--verbose: the scan names each entry it cannot read on stderr (a scan of our own: a
    daemon's snapshot would not say)."""
    if getattr(args, "verbose", False):
        from namespacefs.discover import state

        state.REPORT_TO = sys.stderr
