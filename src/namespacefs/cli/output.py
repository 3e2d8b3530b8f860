"""Output in the util-linux manner (libsmartcols): one table of column definitions per command,
`-o` to choose, `-n`, `-r`, `-J`, `-l`, tree prefixes, and a truncated last column on a terminal.
Shared by every command that prints a table."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any, Generic, NamedTuple, TypeVar

from namespacefs.cli import UserError
from namespacefs.syntax import is_number

Row = TypeVar("Row")


class Column(NamedTuple, Generic[Row]):
    """One column of a table (a named tuple: `ls` imports this before its scan forks, and
    dataclasses would cost that moment 11 ms)."""

    name: str
    help: str
    value: Callable[[Row], Any]
    right: bool = False  # numbers are right-aligned
    wrap: bool = False  # may be truncated to fit the terminal (free text such as COMMAND)


def add_table_options(parser: Any, columns: Sequence[Column[Any]], default: Sequence[str]) -> None:
    parser.add_argument("-o", "--output", metavar="LIST",
                        help=f"columns to print (default: {','.join(default)}); '+LIST' adds to the default")
    parser.add_argument("--output-all", action="store_true", help="print all columns")
    parser.add_argument("-J", "--json", action="store_true", help="JSON output")
    parser.add_argument("-r", "--raw", action="store_true", help="raw output: columns separated by one space, no alignment")
    parser.add_argument("-n", "--noheadings", action="store_true", help="do not print a header line")
    parser.add_argument("-u", "--notruncate", action="store_true", help="do not truncate text in columns")
    parser.add_argument("-H", "--list-columns", action="store_true", help="list the available columns")


def pick_columns(args: Any, columns: Sequence[Column[Any]], default: Sequence[str]) -> list[Column[Any]]:
    table = {c.name: c for c in columns}
    if args.output_all:
        return list(columns)
    names = list(default)
    if args.output:
        spec = args.output
        names = names + spec[1:].split(",") if spec.startswith("+") else spec.split(",")
    chosen = []
    for name in names:
        col = table.get(name.strip().upper())
        if col is None:
            raise UserError(f"unknown column: {name} (see --list-columns)")
        chosen.append(col)
    return chosen


def print_columns_help(columns: Sequence[Column[Any]]) -> None:
    width = max(len(c.name) for c in columns)
    for c in columns:
        print(f"{c.name:>{width}}  {c.help}")


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return ",".join(cell(v) for v in value)
    return str(value)


def render(rows: Iterable[tuple[str, Row]], columns: Sequence[Column[Row]], args: Any, out: Any = None) -> None:
    """Print rows, each with its tree prefix ('' in a flat list). The first column carries the
    prefix, as in lsns -T."""
    out = out or sys.stdout
    table = [(prefix, [cell(c.value(row)) for c in columns]) for prefix, row in rows]
    if args.raw:
        if not args.noheadings:
            print(" ".join(c.name for c in columns), file=out)
        for _prefix, cells in table:
            print(" ".join(_raw(v) for v in cells), file=out)
        return
    lines = [[prefix + cells[0], *cells[1:]] for prefix, cells in table]
    if any(prefix for prefix, _cells in table):
        # the tree column is left-aligned (as in lsns -T), or the branches would not line up
        columns = [columns[0]._replace(right=False), *columns[1:]]
    header = [c.name for c in columns]
    widths = [max([len(header[i])] + [len(line[i]) for line in lines]) for i in range(len(columns))]
    limit = _terminal_width(out) if not args.notruncate else None
    if limit and columns and columns[-1].wrap:
        fixed = sum(widths[:-1]) + len(widths) - 1
        widths[-1] = max(len(header[-1]), min(widths[-1], limit - fixed))
    if not args.noheadings:
        print(_line(header, widths, columns), file=out)
    for line in lines:
        print(_line(line, widths, columns), file=out)


def _line(cells: Sequence[str], widths: Sequence[int], columns: Sequence[Column[Any]]) -> str:
    parts = []
    for i, (text, width, col) in enumerate(zip(cells, widths, columns, strict=False)):
        last = i == len(cells) - 1
        if len(text) > width:
            text = text[: max(width - 1, 0)] + "…"
        parts.append(text.rjust(width) if col.right else (text if last else text.ljust(width)))
    return " ".join(parts).rstrip()


def _raw(value: str) -> str:
    # like libsmartcols raw mode: escape what would break the one-space separation
    return value.replace("\\", "\\x5c").replace(" ", "\\x20").replace("\n", "\\x0a") if value else '""'


def _terminal_width(out: Any) -> int | None:
    try:
        if not os.isatty(out.fileno()):
            return None
    except (AttributeError, OSError, ValueError):
        return None
    columns = os.environ.get("COLUMNS", "")  # as libsmartcols: $COLUMNS first, then the terminal
    if is_number(columns) and int(columns) > 0:
        return int(columns)
    try:
        return os.get_terminal_size(out.fileno()).columns or 80
    except OSError:
        return 80


def tree_rows(roots: Sequence[Row], children: Callable[[Row], Sequence[Row]]) -> list[tuple[str, Row]]:
    """Depth-first rows with lsns-style prefixes ('├─', '└─', '│ ')."""
    rows: list[tuple[str, Row]] = []

    def walk(node: Row, lead: str, branch: str) -> None:
        rows.append((lead + branch, node))
        kids = children(node)
        below = lead + ("│ " if branch == "├─" else "  " if branch else "")
        for i, kid in enumerate(kids):
            walk(kid, below, "└─" if i == len(kids) - 1 else "├─")

    for root in roots:
        walk(root, "", "")
    return rows


def print_json(data: Any) -> None:
    sys.stdout.flush()
    sys.stdout.buffer.write(json_bytes(data))
    sys.stdout.buffer.flush()


def json_bytes(data: Any) -> bytes:
    """JSON laid out for both people and speed: each top-level key on its own line, each item of a
    top-level list on its own line, compact inside. orjson encodes `nsfs ls --json` (1 MB at 1,000
    processes) five times faster than the json module."""
    dumps = load_encoder()
    if not isinstance(data, dict):
        return dumps(data) + b"\n"
    lines = []
    for key, value in data.items():
        if isinstance(value, list) and value:
            lines.append(b"  %s: [\n    %s\n  ]" % (dumps(key), b",\n    ".join(_items(dumps, value))))
        else:
            lines.append(b"  %s: %s" % (dumps(key), dumps(value)))
    return b"{\n" + b",\n".join(lines) + b"\n}\n"


#: Put between the items of a list to encode it in one call (one call per item costs three times
#: as much, in page faults). No string nsfs prints holds a NUL (the kernel's cannot), and if one
#: ever did, the count of pieces would show it: the items are then encoded one by one.
_BETWEEN = "\0"
_ENCODED_BETWEEN = b',"\\u0000",'


def _items(dumps: Callable[[Any], bytes], items: list[Any]) -> list[bytes]:
    """The encoding of each item of a list."""
    spaced = [_BETWEEN] * (2 * len(items) - 1)
    spaced[::2] = items
    pieces = dumps(spaced)[1:-1].split(_ENCODED_BETWEEN)
    return pieces if len(pieces) == len(items) else list(map(dumps, items))


def load_encoder() -> Callable[[Any], bytes]:
    """The JSON encoder, imported on first use (~10 ms with what orjson imports: `take_snapshot`
    calls this while the scan runs, so `ls --json` does not wait for it)."""
    import orjson

    return partial(orjson.dumps, option=orjson.OPT_NON_STR_KEYS)
