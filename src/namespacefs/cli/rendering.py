"""What a command prints, as the bytes it would write, for the daemon to serve (GET /api/ls,
service.listing): the command's own code (cli.ls.prepare and cli.ls.output) run over the daemon's
model, its standard output and standard error caught."""

from __future__ import annotations

import argparse
import io

from namespacefs.cli import UserError, ls
from namespacefs.model import Snapshot

TREES = ls.TREES  # (what -T takes)


def ls_printed(snap: Snapshot, args: argparse.Namespace) -> tuple[int, bytes, str]:
    """What `nsfs ls` with these (checked) options prints over snap: (exit status, stdout, stderr),
    as run() prints it: stdout encoded as a UTF-8 terminal would get it, the command's own error
    as its message and exit status."""
    from namespacefs.cli.common import report_errors

    buffer = io.BytesIO()
    out = io.TextIOWrapper(buffer, encoding="utf-8", errors="surrogateescape", newline="\n")
    err = io.StringIO()
    try:
        ls.check_arguments(args)
        ls.output(snap, args, *ls.prepare(args), out)
    except UserError as e:
        return e.status, b"", str(e)
    out.flush()
    report_errors(snap, err)
    return 0, buffer.getvalue(), err.getvalue()
