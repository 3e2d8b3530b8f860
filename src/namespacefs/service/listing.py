"""GET /api/ls: exactly what `nsfs ls` with the given options prints (text, or its JSON), made by
the command's own code (cli.rendering.ls_printed) over the live model, once per model change and set of
options. `nsfs ls` asks for it when a daemon runs (cli.remote) and writes what it gets.

The query parameters are the command's options by their long names (docs/service.md): repeatable
`namespace` and `type`, `task`, `tree`, `filter`, `output`, the flags (`json`, `raw`, `list`,
`noheadings`, `notruncate`, `nowrap`, `output_all`, `persistent`; 1 or true), `width` (the
terminal's columns, to fit the table as the command would on that terminal) and `db` (the names
database the caller means: another than the daemon's is refused with 409, the caller scans
itself). The answer is 200 with the bytes on the body and what the command writes on stderr in
X-Nsfs-Stderr (percent-encoded), or 422 with the command's error (`detail`) and exit status
(X-Nsfs-Exit). Only root (over the Unix socket, or with the token) may ask: the model is rendered
whole, as root's `nsfs ls` shows it.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections import OrderedDict
from typing import Any, NamedTuple
from urllib.parse import quote

from fastapi import HTTPException, Response

from namespacefs import tables
from namespacefs.cli import rendering  # (the one arrow from the service to the command line: docs/architecture.md)
from namespacefs.kernel import NS_TYPES
from namespacefs.model import Snapshot
from namespacefs.service import models
from namespacefs.service.live import Live

_FLAGS = ("persistent", "list", "json", "raw", "noheadings", "notruncate", "nowrap", "output_all")
_TEXTS = ("tree", "filter", "output", "db")
_NUMBERS = {"task": (1, 2**22), "width": (1, 100_000)}
_LISTS = ("namespace", "type")
#: What the OpenAPI document says of its answers.
RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/plain": {"schema": {"type": "string"}}, "application/json": {"schema": {"type": "object"}}}},
    **{code: {"model": models.Error, "description": why} for code, why in (
        (400, "an unknown option or a bad value"), (403, "not root"),
        (409, "another names database than the daemon's (the caller scans itself)"),
        (422, "the command's own error: `detail`, and its exit status (`exit`, and in X-Nsfs-Exit)"))},
}
#: Answers kept (the model's generation and the options are the key); a new model empties it.
KEEP = 32


def options(items: list[tuple[str, str]]) -> argparse.Namespace:
    """The command's options from the query (400 for one it does not have or a bad value)."""
    args = argparse.Namespace(namespace=[], type=None, task=None, tree=None, filter=None, output=None, db=None,
                              width=None, list_columns=False, verbose=False, sources=None,
                              **dict.fromkeys(_FLAGS, False))
    for name, value in items:
        if name in _FLAGS:
            if value.lower() not in ("1", "true", "0", "false"):
                raise HTTPException(400, f"{name}: want 1 or 0, not '{value}'")
            setattr(args, name, value.lower() in ("1", "true"))
        elif name in _TEXTS:
            setattr(args, name, value)
        elif name in _NUMBERS:
            low, high = _NUMBERS[name]
            if not (value.isascii() and value.isdigit() and low <= int(value) <= high):
                raise HTTPException(400, f"{name}: want a number in [{low}, {high}], not '{value}'")
            setattr(args, name, int(value))
        elif name in _LISTS:
            if name == "type" and value not in NS_TYPES:
                raise HTTPException(400, f"unknown namespace type '{value}' (one of {', '.join(NS_TYPES)})")
            setattr(args, name, [*(getattr(args, name) or []), value])
        else:
            raise HTTPException(400, f"unknown option '{name}'")
    if args.tree is not None and args.tree not in rendering.TREES:
        raise HTTPException(400, f"tree: one of {', '.join(rendering.TREES)}, not '{args.tree}'")
    return args


class Rendered(NamedTuple):
    snap: Snapshot  # the model it was made from
    as_of: float  # the time up to which that model had applied every event
    made: float  # time.monotonic() when it was made
    printed: tuple[int, bytes, str]  # (exit status, stdout, stderr)


class Listings:
    """The answers of GET /api/ls, each made once per model (and set of options).

    Every `nsfs ls` changes the model it asks about (its own fork and exec), so an answer made
    REUSE seconds ago from a model with the same namespaces, all named the same, is given again for
    a listing that selects no process or namespace (no -p, no positional selector): what it shows
    of processes and holders (NPROCS, PID, COMMAND, HOLDERS, ...) is then at most REUSE seconds
    behind, as its `taken_at` says in JSON; a namespace that came, went or was renamed is always
    in it."""

    REUSE = 0.5

    def __init__(self, live: Live) -> None:
        self.live = live
        self._lock = threading.Lock()
        self._answers: OrderedDict[tuple[tuple[str, str], ...], Rendered] = OrderedDict()
        self.rendered = self.served = 0  # answers made by the command's code; answers given (/api/status)

    def answer(self, items: list[tuple[str, str]]) -> Response:
        """The response to GET /api/ls with these query items."""
        args = options(items)
        if args.db is not None and os.path.abspath(args.db) != self.live.names_path():
            raise HTTPException(409, f"the daemon names with {self.live.names_path()}, not {args.db}")
        key = tuple(sorted((n, v) for n, v in items if n != "db"))
        with self._lock:
            as_of = self.live.as_of()  # (first: the model read next is at least that new)
            snap = self.live.whole_named()
            found = self._answers.get(key)
            if found is not None and found.snap is snap:
                found = found._replace(as_of=as_of)
            elif found is None or not self._reusable(found, snap, args):
                found = Rendered(snap, as_of, time.monotonic(), rendering.ls_printed(snap, args))
                self.rendered += 1
            self._answers[key] = found
            self._answers.move_to_end(key)
            while len(self._answers) > KEEP:
                self._answers.popitem(last=False)
        self.served += 1
        status, out, err = found.printed
        if status:
            return _error(err, status)
        if args.json and not (args.output or args.output_all):
            # the JSON contract's taken_at: its model was current up to as_of (as GET /api/snapshot says)
            out = out.replace(b'"taken_at": %s' % _number(found.snap.taken_at), b'"taken_at": %s' % _number(found.as_of), 1)
        return Response(out, media_type="application/json" if args.json else "text/plain; charset=utf-8",
                        headers={"X-Nsfs-Stderr": quote(err)} if err else {})

    def _reusable(self, found: Rendered, snap: Snapshot, args: argparse.Namespace) -> bool:
        if args.task is not None or args.namespace or time.monotonic() - found.made > self.REUSE:
            return False
        before, now = found.snap.namespaces, snap.namespaces
        return tables.same_keys(before, now) and all(
            ns is before[inode] or (ns.name == before[inode].name and ns.path == before[inode].path)
            for inode, ns in now.items())

    def counts(self) -> dict[str, int]:
        return {"rendered": self.rendered, "served": self.served}


def _number(value: float) -> bytes:
    import orjson

    return orjson.dumps(value)


def _error(message: str, status: int) -> Response:
    import orjson

    body: dict[str, Any] = {"detail": message, "exit": status}
    return Response(orjson.dumps(body), status_code=422, media_type="application/json",
                    headers={"X-Nsfs-Exit": str(status)})
