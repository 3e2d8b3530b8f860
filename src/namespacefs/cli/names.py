"""`nsfs rename` and `nsfs names`: argument parsing only; the work is in namespacefs.names.

  nsfs rename NS NEWNAME          give a namespace a name that is kept (per boot, in the database)
  nsfs rename --default NS        drop it again (back to the world or default name)
  nsfs names [list] [-t TYPE]     every namespace's name, path and where the name comes from
  nsfs names --history            names of namespaces that are gone
  nsfs names --prune [--older-than DAYS]
  nsfs names export [FILE]        the renames, with what finds them again after a restore or a move
  nsfs names import FILE [--pid-map OLD:NEW,...] [--pid-map-file FILE] [--dry-run]
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from typing import Any

from namespacefs import core, names
from namespacefs.cli import UserError, duration
from namespacefs.cli.common import add_source_options, chosen_sources, find, ns_type, take_snapshot
from namespacefs.cli.output import Column, add_table_options, pick_columns, print_columns_help, print_json, render
from namespacefs.model import Namespace, Snapshot, by_type
from namespacefs.names import migrate

#: `nsfs names import --dry-run FILE`: options may come between the action and the file.
INTERMIXED = True


class NameRow:
    __slots__ = ("ns", "origin", "snap")

    def __init__(self, ns: Namespace, origin: str, snap: Snapshot) -> None:
        self.ns, self.origin, self.snap = ns, origin, snap


COLUMNS: list[Column[NameRow]] = [
    Column("NS", "namespace identifier (inode number)", lambda r: r.ns.inode, right=True),
    Column("TYPE", "kind of namespace", lambda r: r.ns.type),
    Column("NAME", "namespace name", lambda r: r.ns.name),
    Column("ORIGIN", "where the name comes from: rename, engine, netns or default", lambda r: r.origin),
    Column("PATH", "name path through the owning user namespaces", lambda r: r.ns.path),
    Column("PARENTPATH", "pid and user namespaces: name path along the parent chain",
           lambda r: names.parent_path(r.ns, r.snap)),
    Column("ID", "64-bit namespace id", lambda r: r.ns.id, right=True),
]
DEFAULT_COLUMNS = ("NS", "TYPE", "NAME", "ORIGIN", "PATH")

HISTORY_COLUMNS: list[Column[dict[str, Any]]] = [
    Column("NAME", "the name it had", lambda h: h["name"]),
    Column("TYPE", "kind of namespace", lambda h: h["type"]),
    Column("ID", "its 64-bit namespace id", lambda h: h["id"], right=True),
    Column("NS", "its inode number", lambda h: h["inode"], right=True),
    Column("FIRST", "named at", lambda h: _when(h["first_seen"])),
    Column("LAST", "last seen alive", lambda h: _when(h["last_seen"])),
    Column("ENDED", "found gone at", lambda h: _when(h["ended"])),
    Column("REASON", "gone, reboot, or renamed (replaced by a rename or an import)", lambda h: h["reason"]),
    Column("BOOT", "boot id it lived in", lambda h: h["boot_id"]),
]
HISTORY_DEFAULT = ("NAME", "TYPE", "ID", "NS", "FIRST", "LAST", "REASON")


def _when(t: float | None) -> str:
    if t is None:
        return ""
    return datetime.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    if command == "rename":
        parser.add_argument("namespace", help="the namespace (inode, TYPE:[INODE], path, PID:TYPE, id, name or name path)")
        parser.add_argument("new_name", nargs="?", help="its new name (unique in its owning user namespace)")
        parser.add_argument("--default", action="store_true", help="drop its name: back to the world or default name")
        parser.add_argument("-t", "--type", type=ns_type, help="the namespace must be of this type")
        add_source_options(parser)
        return
    parser.add_argument("action", nargs="?", default="list", choices=("list", "export", "import"),
                        help="list (default), export [FILE], import FILE")
    parser.add_argument("file", nargs="?",
                        help="export: where to write (default: stdout); import: the export to read ('-': stdin)")
    parser.add_argument("--history", action="store_true", help="list the names of namespaces that are gone")
    parser.add_argument("--prune", action="store_true", help="delete the history (see --older-than)")
    parser.add_argument("--older-than", type=duration, metavar="DAYS", help="with --prune: only entries older than this")
    parser.add_argument("--pid-map", action="append", default=[], metavar="OLD:NEW[,...]",
                        help="import: old pid -> new pid (repeatable); finds each namespace through its processes")
    parser.add_argument("--pid-map-file", metavar="FILE", help="import: pid map, one 'OLD NEW' or 'OLD:NEW' a line")
    parser.add_argument("--dry-run", action="store_true", help="import: report the matches, rename nothing")
    parser.add_argument("-t", "--type", action="append", type=ns_type, help="list: only this type (repeatable)")
    add_table_options(parser, COLUMNS, DEFAULT_COLUMNS)
    add_source_options(parser)


def run(args: argparse.Namespace) -> int:
    try:
        if args.command == "rename":
            return _rename(args)
        return _names(args)
    except names.NamingError as e:
        raise UserError(str(e)) from None


def _snapshot(args: argparse.Namespace) -> Snapshot:
    """A snapshot named strictly: a broken database is an error here, not a warning."""
    return core.snapshot(chosen_sources(args.sources), db=args.db, strict=True)


def _rename(args: argparse.Namespace) -> int:
    if args.default == (args.new_name is not None):
        raise UserError("give a new name, or --default to drop the name")
    snap = _snapshot(args)
    ns = find(snap, args.namespace, args.type)
    if args.default:
        if not names.reset(snap, ns, args.db):
            print(f"nsfs rename: {ns.path} has no name of its own", file=sys.stderr)
        return 0
    names.rename(snap, ns, args.new_name, args.db, core.engine_names(snap))
    return 0


def _names(args: argparse.Namespace) -> int:
    if args.older_than is not None and not args.prune:
        raise UserError("--older-than goes with --prune")
    if args.prune:
        gone = names.prune(args.db, None if args.older_than is None else args.older_than * 86400)
        print(f"pruned {gone} history entr{'y' if gone == 1 else 'ies'}")
        return 0
    if args.history:
        if args.list_columns:
            print_columns_help(HISTORY_COLUMNS)
            return 0
        entries = names.history(args.db)
        if args.json:
            print_json({"history": entries})
        else:
            render([("", h) for h in entries], pick_columns(args, HISTORY_COLUMNS, HISTORY_DEFAULT), args)
        return 0
    if args.action == "export":
        return _export(args)
    if args.action == "import":
        return _import(args)
    if args.file:
        raise UserError(f"unexpected argument '{args.file}'")
    if args.list_columns:
        print_columns_help(COLUMNS)
        return 0
    columns = pick_columns(args, COLUMNS, DEFAULT_COLUMNS)
    snap = take_snapshot(args)
    got = names.assigned(snap, args.db, engine=core.engine_names(snap))
    chosen = sorted((ns for ns in snap if not args.type or ns.type in args.type),
                    key=lambda ns: (ns.path or "", *by_type(ns)))
    rows = [NameRow(ns, got.names[ns.inode][1], snap) for ns in chosen]
    if args.json:
        print_json({"names": [{"inode": r.ns.inode, "id": r.ns.id, "type": r.ns.type, "name": r.ns.name,
                               "origin": r.origin, "path": r.ns.path, "parent_path": names.parent_path(r.ns, snap)}
                              for r in rows]})
    else:
        render([("", r) for r in rows], columns, args)
    return 0


def _export(args: argparse.Namespace) -> int:
    snap = _snapshot(args)
    data = migrate.export(snap, args.db, core.engine_names(snap))
    text = json.dumps(data, indent=2) + "\n"
    if args.file and args.file != "-":
        try:
            with open(args.file, "w") as f:
                f.write(text)
        except OSError as e:
            raise UserError(f"cannot write {args.file}: {e.strerror}") from None
        print(f"exported {len(data['names'])} name(s) to {args.file}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


#: The largest export (or pid map) an import reads: an export of 100,000 names is ~40 MB.
MAX_IMPORT_BYTES = 64 << 20


def _read_text(path: str, what: str) -> str:
    """A text file given to import ('-': standard input), at most MAX_IMPORT_BYTES, valid UTF-8."""
    try:
        if path == "-":
            data = sys.stdin.buffer.read(MAX_IMPORT_BYTES + 1)
        else:
            with open(path, "rb") as f:
                data = f.read(MAX_IMPORT_BYTES + 1)
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    if len(data) > MAX_IMPORT_BYTES:
        raise UserError(f"{what} {path} is larger than {MAX_IMPORT_BYTES >> 20} MiB; refusing to read it")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{what} {path} is not a text file (not UTF-8)") from None


def _import(args: argparse.Namespace) -> int:
    if not args.file:
        raise UserError("import needs the export file to read ('-' for standard input)")
    text = _read_text(args.file, "the export")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{args.file} is not JSON ({e.msg} at line {e.lineno})") from None
    except RecursionError:
        raise UserError(f"{args.file} is nested too deeply to be a names export") from None
    pid_map: dict[int, int] = {}
    for spec in args.pid_map:
        pid_map.update(migrate.parse_pid_map(spec))
    if args.pid_map_file:
        pid_map.update(migrate.parse_pid_map(_read_text(args.pid_map_file, "the pid map")))
    snap = _snapshot(args)
    result = migrate.import_names(data, snap, args.db, pid_map, args.dry_run, core.engine_names(snap))
    verb = "would name" if args.dry_run else "named"
    for entry, ns, how in result.applied:
        replaced = result.replaced.get(ns.inode)
        instead = f", replacing its name '{replaced}'" if replaced else ""
        print(f"{verb} {ns.type} namespace {ns.inode} '{entry['name']}' (matched by {how}{instead})")
    for entry, why in result.unmatched:
        print(f"nsfs names import: '{entry['name']}' ({entry['type']}): not applied: {why}", file=sys.stderr)
    return 1 if result.unmatched else 0
