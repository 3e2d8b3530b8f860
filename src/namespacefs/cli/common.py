"""Options and helpers shared by the commands that work on a snapshot."""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import sys
from functools import cache

from namespacefs import core, targets
from namespacefs.cli import UserError
from namespacefs.discover import SOURCES
from namespacefs.kernel import NS_TYPES
from namespacefs.model import Namespace, Snapshot


def add_source_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sources", metavar="LIST",
        help=f"discovery sources to use (default: all of {','.join(SOURCES)}); --sources=-LIST leaves some out")
    with contextlib.suppress(argparse.ArgumentError):  # (a command may already have its own --db)
        parser.add_argument("--db", metavar="PATH", default=os.environ.get("NSFS_DB") or None,
                            help="the names database (default: $NSFS_DB, else /var/lib/namespacefs/names.db)")


def chosen_sources(spec: str | None) -> tuple[str, ...]:
    if not spec:
        return SOURCES
    drop = spec.startswith("-")
    names = [s.strip() for s in spec.lstrip("-").split(",") if s.strip()]
    unknown = [s for s in names if s not in SOURCES]
    if unknown:
        raise UserError(f"unknown source: {', '.join(unknown)} (known: {', '.join(SOURCES)})")
    return tuple(s for s in SOURCES if (s not in names) == drop)


def take_snapshot(args: argparse.Namespace) -> Snapshot:
    return core.snapshot(chosen_sources(getattr(args, "sources", None)), db=getattr(args, "db", None))


def ns_type(text: str) -> str:
    """argparse type for -t TYPE."""
    if text not in NS_TYPES:
        raise argparse.ArgumentTypeError(f"unknown namespace type '{text}' (one of {', '.join(NS_TYPES)})")
    return text


def find(snapshot: Snapshot, spec: str, nstype: str | None = None) -> Namespace:
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


def report_errors(snapshot: Snapshot) -> None:
    """Say, on stderr, what could not be read, so a partial answer is never mistaken for a whole one."""
    denied = snapshot.errors.get("denied", 0)
    if denied:
        hint = "run as root to see everything" if os.geteuid() else "protected by the kernel or a security module"
        what = "entry" if denied == 1 else "entries"
        print(f"nsfs: {denied} {what} could not be read (permission denied; {hint})", file=sys.stderr)
