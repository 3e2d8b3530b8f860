"""Asking a running daemon (`nsfs serve`) for exactly what a command prints, and printing it: the
daemon renders it once per model change with the command's own code (GET /api/ls runs
cli.rendering.ls_printed over its live model), so `nsfs ls` with a daemon costs a process start and one
request, not a scan, a naming pass and a rendering.

Only options the daemon can honour are sent. Anything else is done here, by a scan of our own:
-v/--verbose (the scan names what it cannot read), --sources, a names database other than the
daemon's (it answers 409), a selector that is a path (looked up on our filesystem, in our mount
namespace and working directory), NSFS_NO_DAEMON=1, and a standard output that is not UTF-8 (the
daemon's text is). This module imports nothing heavy: what a scan needs is imported only by the
command that falls back to one.
"""

from __future__ import annotations

import argparse
import os
import sys

from namespacefs.cli import UserError

#: The options of `nsfs ls` the daemon is given (its query parameters, docs/service.md), by their
#: argparse names; each other option of the command is in LOCAL_ONLY (a test holds them in step).
LS_OPTIONS = ("namespace", "type", "task", "persistent", "list", "tree", "filter", "output", "output_all",
              "json", "raw", "noheadings", "notruncate", "nowrap")
#: Options the daemon is not asked about: done here (-H, -V), or a reason to scan here (see above).
LS_LOCAL_ONLY = ("list_columns", "verbose", "sources", "db")
_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _quote(text: str) -> str:
    """Percent-encoding of a query value (UTF-8; urllib.parse would be one more import)."""
    return "".join(chr(b) if b in _SAFE else f"%{b:02X}" for b in text.encode("utf-8"))


def ls_query(args: argparse.Namespace) -> str | None:
    """The query of GET /api/ls for these (checked) options, or None when they need a scan of our own."""
    if args.verbose or args.sources or os.environ.get("NSFS_NO_DAEMON") or any("/" in s for s in args.namespace):
        return None
    if (sys.stdout.encoding or "").lower().replace("-", "").replace("_", "") != "utf8":
        return None
    pairs: list[tuple[str, object]] = []
    for name in LS_OPTIONS:
        value = getattr(args, name)
        if isinstance(value, list):
            pairs += [(name, v) for v in value]
        elif value is True:
            pairs.append((name, 1))
        elif value is not None and value is not False:
            pairs.append((name, value))
    if args.db:
        pairs.append(("db", os.path.abspath(args.db)))
    if not args.notruncate:
        from namespacefs.cli.output import _terminal_width

        if width := _terminal_width(sys.stdout):
            pairs.append(("width", width))
    try:
        return "&".join(f"{name}={_quote(str(value))}" for name, value in pairs)
    except UnicodeEncodeError:  # (bytes that are no text, from a file name: the daemon reads UTF-8)
        return None


#: What printed_by_daemon() found: the daemon printed it; no daemon answered (a scan of our own,
#: without asking it again); or it was not asked, or cannot answer for these options (a scan of
#: our own, which may still start from its snapshot: core.snapshot's provider).
PRINTED, NO_DAEMON, SCAN_HERE = "printed", "no daemon", "scan here"


def printed_by_daemon(args: argparse.Namespace) -> str:
    """`nsfs ls` printed by a running daemon: PRINTED when it was (its output written, its error
    raised as ours), else NO_DAEMON or SCAN_HERE."""
    query = ls_query(args)
    if query is None:
        return SCAN_HERE
    from namespacefs.service.client import NotAnswered, get_printed

    answer = get_printed(f"/api/ls?{query}")
    if answer is None:
        return NO_DAEMON
    if isinstance(answer, NotAnswered):
        return SCAN_HERE
    status, out, err = answer
    if status:
        raise UserError(err, status)
    sys.stdout.flush()
    sys.stdout.buffer.write(out)
    sys.stdout.buffer.flush()
    if err:
        sys.stderr.write(err)
    return PRINTED
