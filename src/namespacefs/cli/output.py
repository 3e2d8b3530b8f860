"""Output in the util-linux manner (libsmartcols): one table of column definitions per command,
`-o` to choose, `-n`, `-r`, `-J`, `-l`, `-u`, `-W`, tree prefixes, and tables fitted to a terminal's
width by truncating the columns flagged for it. The one table renderer of every command that
prints a table (ls, containers, accounting, names)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Generic, NamedTuple, TypeVar

from namespacefs.cli import UserError
from namespacefs.syntax import is_number

RowT = TypeVar("RowT")  # what one row of a table is (a namespace row, a container, ...)


class Column(NamedTuple, Generic[RowT]):
    """One column of a table The flags are libsmartcols's: `trunc`
    (SCOLS_FL_TRUNC) lets the renderer shrink it when the table is wider than the terminal (down
    to its header's width), `right` (SCOLS_FL_RIGHT) aligns it right, `whint` is its absolute width
    hint (it is at least that wide, as lsns's NS is 10 and PID 5); `number` is its JSON type
    (SCOLS_JSON_NUMBER; otherwise a string, as in util-linux)."""

    name: str
    help: str
    value: Callable[[RowT], Any]
    right: bool = False  # numbers are right-aligned
    trunc: bool = False  # may be truncated to fit the terminal (free text such as COMMAND)
    number: bool = False  # a number in JSON (and in -Q/--filter comparisons)
    whint: int = 0  # at least this wide (0: as wide as its header and cells)

    @property
    def key(self) -> str:
        """Its JSON key, as libsmartcols writes it: the name in lower case."""
        return self.name.lower()


def add_table_options(parser: Any, columns: Sequence[Column[Any]], default: Sequence[str]) -> None:
    parser.add_argument("-o", "--output", metavar="LIST",
                        help=f"columns to print (default: {','.join(default)}); '+LIST' adds to the default")
    parser.add_argument("--output-all", action="store_true", help="print all columns")
    parser.add_argument("-J", "--json", action="store_true", help="JSON output")
    parser.add_argument("-r", "--raw", action="store_true", help="raw output: columns separated by one space, no alignment")
    parser.add_argument("-n", "--noheadings", action="store_true", help="do not print a header line")
    parser.add_argument("-u", "--notruncate", action="store_true", help="do not truncate text in columns")
    parser.add_argument("-W", "--nowrap", action="store_true", help="do not use multi-line cells (join their lines with ',')")
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
    if type(value) is str:  # (most cells: first)
        return value
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return ",".join(cell(v) for v in value)
    return str(value)


def render(rows: Iterable[tuple[str, RowT]], columns: Sequence[Column[RowT]], args: Any, out: Any = None,
           tree_column: int = 0) -> None:
    """Print rows, each with its tree prefix ('' in a flat list). The column at tree_column (the
    first unless told) carries the prefix, as in lsns -T. On a terminal the table is fitted to its width as libsmartcols does:
    only `trunc` columns shrink (widest first, never below their header), so rows do not wrap;
    -u/--notruncate keeps every cell whole. A cell with newlines (lsns's NSFS) takes several lines
    unless -W/--nowrap or -r, where its lines are joined with commas."""
    out = out or sys.stdout
    nowrap = args.raw or getattr(args, "nowrap", False)
    values = [c.value for c in columns]
    table = [(prefix, [_one_line(cell(value(row))) for value in values] if nowrap else [cell(value(row)) for value in values])
             for prefix, row in rows]
    t = tree_column if 0 <= tree_column < len(columns) else 0
    lines = [[*cells[:t], prefix + cells[t], *cells[t + 1:]] if prefix else cells for prefix, cells in table]
    if args.raw:
        raw = [" ".join(c.name for c in columns)] if not args.noheadings else []
        raw += [" ".join(_raw(v) for v in cells) for cells in lines]
        if raw:
            out.write("\n".join(raw) + "\n")
        return
    if any(prefix for prefix, _cells in table):
        # the tree column is left-aligned (as in lsns -T), or the branches would not line up
        columns = [c._replace(right=False) if i == t else c for i, c in enumerate(columns)]
    header = [c.name for c in columns]
    texts = [[line[i] for line in lines] for i in range(len(columns))]  # column by column
    tall = [i for i, column in enumerate(texts) if "\n" in "".join(column)]  # the columns with multi-line cells
    widths = [max(len(header[i]), columns[i].whint, max(map(_width if i in tall else len, column), default=0))
              for i, column in enumerate(texts)]
    # (a daemon rendering for a terminal is told its width: args.width, see cli.remote)
    limit = None if args.notruncate else getattr(args, "width", None) or _terminal_width(out)
    if limit:
        widths = fit(widths, columns, limit)
    line_of = _liner(widths, columns)
    printed = [line_of(header)] if not args.noheadings else []
    for line in lines:
        if tall and any("\n" in line[i] for i in tall):
            printed += [line_of(physical) for physical in _physical_lines(line)]
        else:
            printed.append(line_of(line))
    if printed:
        out.write("\n".join(printed) + "\n")  # one write: a line at a time costs a terminal 50 us each


def fit(widths: Sequence[int], columns: Sequence[Column[Any]], limit: int) -> list[int]:
    """Column widths that fit in `limit` characters (one space between columns) where they can:
    libsmartcols's reduce stages in short. Only truncatable columns shrink, the widest above its
    minimum first, one character at a time; a table that still does not fit overflows."""
    widths = list(widths)
    floor = [len(c.name) if c.trunc else w for c, w in zip(columns, widths, strict=True)]
    excess = sum(widths) + len(widths) - 1 - limit
    while excess > 0:
        slack = [(w - f, i) for i, (w, f) in enumerate(zip(widths, floor, strict=True)) if w > f]
        if not slack:
            break
        _, i = max(slack)
        widths[i] -= 1
        excess -= 1
    return widths


def _width(text: str) -> int:
    return max(map(len, text.split("\n"))) if "\n" in text else len(text)


def _one_line(text: str) -> str:
    return text.replace("\n", ",") if "\n" in text else text


def _physical_lines(cells: list[str]) -> list[list[str]]:
    """A row whose cells hold newlines, as several printed lines (the other cells blank below)."""
    split = [c.split("\n") for c in cells]
    height = max(map(len, split))
    return [[parts[k] if k < len(parts) else "" for parts in split] for k in range(height)]


def _liner(widths: Sequence[int], columns: Sequence[Column[Any]]) -> Callable[[Sequence[str]], str]:
    """The function that lays out one line of cells in these columns: each cut to its width (with
    '…'), right-aligned or padded, the last one unpadded; laid out once per table, used per line."""
    last = len(columns) - 1
    spec = [(width, col.right, i == last) for i, (width, col) in enumerate(zip(widths, columns, strict=False))]

    def line(cells: Sequence[str]) -> str:
        parts = []
        for text, (width, right, final) in zip(cells, spec, strict=False):
            if len(text) > width:
                text = text[: max(width - 1, 0)] + "…"
            parts.append(text.rjust(width) if right else (text if final else text.ljust(width)))
        return " ".join(parts).rstrip()

    return line


def json_rows(rows: Iterable[RowT], columns: Sequence[Column[RowT]], children: Callable[[RowT], Sequence[RowT]] | None = None,
              nowrap: bool = False) -> list[dict[str, Any]]:
    """Rows as libsmartcols prints them in JSON: one object per row keyed by the lower-case column
    names, numbers for number columns, null for empty cells, and a row's tree children (lsns -T
    and its default process tree) under "children"."""
    result = []
    for row in rows:
        item = {c.key: json_cell(c, c.value(row), nowrap) for c in columns}
        if children is not None and (kids := children(row)):
            item["children"] = json_rows(kids, columns, children, nowrap)
        result.append(item)
    return result


def json_cell(column: Column[Any], value: Any, nowrap: bool = False) -> Any:
    """One cell in JSON: libsmartcols writes an empty cell as null, a number column's cell raw and
    any other cell as a string."""
    if value is None or value == "":
        return None
    if isinstance(value, int) and column.number:
        return value
    text = value if type(value) is str else cell(value)
    return _one_line(text) if nowrap else text


def _raw(value: str) -> str:
    # like libsmartcols raw mode (fputs_nonblank): escape what would break the one-space separation;
    # an empty cell is nothing between two spaces
    return value.replace("\\", "\\x5c").replace(" ", "\\x20").replace("\n", "\\x0a")


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


def tree_rows(roots: Sequence[RowT], children: Callable[[RowT], Sequence[RowT]]) -> list[tuple[str, RowT]]:
    """Depth-first rows with lsns-style prefixes ('├─', '└─', '│ ')."""
    rows: list[tuple[str, RowT]] = []

    def walk(node: RowT, lead: str, branch: str) -> None:
        rows.append((lead + branch, node))
        kids = children(node)
        below = lead + ("│ " if branch == "├─" else "  " if branch else "")
        for i, kid in enumerate(kids):
            walk(kid, below, "└─" if i == len(kids) - 1 else "├─")

    for root in roots:
        walk(root, "", "")
    return rows


def print_json(data: Any, out: Any = None) -> None:
    """json_bytes(data) on out's byte stream (standard output unless told)."""
    out = out or sys.stdout
    out.flush()
    out.buffer.write(json_bytes(data))
    out.buffer.flush()


def json_bytes(data: Any) -> bytes:
    """JSON laid out for both people and speed: each top-level key on its own line, each item of a
    top-level list on its own line, compact inside (orjson: `nsfs ls --json` is 1 MB at 1,000
    processes, encoded five times faster than by the json module). Each item's encoding is copied
    into one buffer and dropped at once: keeping thousands of orjson's results alive to join them
    costs each its own fresh memory, four times the encoding itself."""
    import orjson  # (only the commands that print JSON need it)

    try:
        return _laid_out(data, orjson.dumps, 0)
    except orjson.JSONEncodeError:  # a dict with int keys, as some reports have: twice as slow
        return _laid_out(data, orjson.dumps, orjson.OPT_NON_STR_KEYS)


def _laid_out(data: Any, dumps: Callable[..., bytes], option: int) -> bytes:
    if not isinstance(data, dict):
        return dumps(data, option=option) + b"\n"
    out = bytearray(b"{\n")
    for i, (key, value) in enumerate(data.items()):
        out += b",\n  " if i else b"  "
        out += dumps(key, option=option)
        out += b": "
        if isinstance(value, list) and value:
            out += b"[\n    "
            out += dumps(value[0], option=option)
            for item in value[1:]:
                out += b",\n    "
                out += dumps(item, option=option)
            out += b"\n  ]"
        else:
            out += dumps(value, option=option)
    out += b"\n}\n"
    return bytes(out)
