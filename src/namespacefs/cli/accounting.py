"""`nsfs accounting`, `nsfs shift` and `nsfs unshift`: the diagnosis of shared ids between user
namespaces and the two fixes (an idmapped mount, or rewriting ownership with a journal)."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Never

from namespacefs import accounting, handles
from namespacefs.cli import UserError, whole
from namespacefs.cli.common import add_source_options, find, report_errors, take_snapshot, user_name
from namespacefs.cli.output import Column, add_table_options, pick_columns, print_columns_help, print_json, render, tree_rows
from namespacefs.model import Namespace
from namespacefs.ops import chown_shift
from namespacefs.ops import shift as idmap
from namespacefs.ops.shift import IdMap, ShiftError

if TYPE_CHECKING:
    from tqdm import tqdm  # (imported when a bar is drawn: tqdm takes ~60 ms to import, a third of a small shift)

# --- nsfs accounting ---------------------------------------------------------------------------


def _fmt_map(m: Any) -> str:
    return ",".join(f"{a}:{b}:{n}" for a, b, n in m or ())


def _limit_columns() -> list[Column[accounting.UsernsAccount]]:
    try:
        names = sorted(os.listdir(accounting.SYSCTL_USER))
    except OSError:
        names = []
    cols = []
    for name in names:
        head = "MAX_" + name.removeprefix("max_").upper().replace("_NAMESPACES", "NS")
        cols.append(Column(head, f"/proc/sys/user/{name} inside the namespace", _limit(name), right=True))
    return cols


def _limit(name: str) -> Callable[[accounting.UsernsAccount], int | None]:
    return lambda a: (a.limits or {}).get(name)


def _flags(acct: accounting.Accounting, a: accounting.UsernsAccount) -> str:
    flags = [f"host-root-{k}" for k in a.host_root]
    ino = a.namespace.inode
    kinds = sorted({o.kind for o in acct.overlaps if ino in (o.a, o.b)})
    flags += [f"shared-{k}s" for k in kinds]
    if any(u.at_limit for u in a.uids):
        flags.append("nproc-at-limit")
    if a.limits_error:
        flags.append("limits-unread")
    return ",".join(flags)


def userns_columns(acct: accounting.Accounting) -> list[Column[accounting.UsernsAccount]]:
    return [
        Column("NS", "user namespace inode", lambda a: a.namespace.inode, right=True),
        Column("ID", "64-bit namespace id", lambda a: a.namespace.id, right=True),
        Column("LEVEL", "depth below the initial user namespace", lambda a: a.namespace.level, right=True),
        Column("PROCS", "processes in it", lambda a: a.processes, right=True),
        Column("THREADS", "tasks in it (what RLIMIT_NPROC counts)", lambda a: a.threads, right=True),
        Column("UIDS", "distinct uids running in it", lambda a: len(a.uids), right=True),
        Column("OWNER", "the user that created it", lambda a: user_name(a.namespace.owner_uid), trunc=True),
        Column("UIDMAP", "uid map (inside:host:count)", lambda a: _fmt_map(a.namespace.uid_map), trunc=True),
        Column("GIDMAP", "gid map (inside:host:count)", lambda a: _fmt_map(a.namespace.gid_map), trunc=True),
        Column("FLAGS", "host-root-uid/gid, shared-uids/gids (overlap with another), nproc-at-limit",
               lambda a: _flags(acct, a), trunc=True),
        *_limit_columns(),
        Column("NAME", "name (or name path)", lambda a: a.namespace.path or a.namespace.name, trunc=True),
    ]


USERNS_DEFAULT = ("NS", "LEVEL", "PROCS", "THREADS", "UIDS", "OWNER", "UIDMAP", "FLAGS", "NAME")

UidRow = tuple[accounting.UsernsAccount, accounting.UidCount]
UID_COLUMNS: list[Column[UidRow]] = [
    Column("NS", "user namespace inode", lambda r: r[0].namespace.inode, right=True),
    Column("UID", "uid inside the namespace", lambda r: r[1].uid, right=True),
    Column("HOSTUID", "the same uid on the host", lambda r: r[1].host_uid, right=True),
    Column("USER", "host user name", lambda r: user_name(r[1].host_uid), trunc=True),
    Column("PROCS", "processes", lambda r: r[1].processes, right=True),
    Column("THREADS", "tasks (what RLIMIT_NPROC counts)", lambda r: r[1].threads, right=True),
    Column("NPROC", "lowest soft RLIMIT_NPROC among them (empty: unlimited)", lambda r: r[1].nproc_limit, right=True),
    Column("CHARGED", "tasks the kernel checks NPROC against: these, and those of the user namespaces this uid "
           "created below (before Linux 5.14: HOSTTASKS)", lambda r: r[1].charged, right=True),
    Column("HOSTTASKS", "tasks with this host uid in every namespace", lambda r: r[1].host_threads, right=True),
    Column("FLAGS", "at-limit: CHARGED reached NPROC (the next fork fails)",
           lambda r: "at-limit" if r[1].at_limit else "", trunc=True),
]
UID_DEFAULT = ("NS", "UID", "HOSTUID", "USER", "PROCS", "THREADS", "NPROC", "CHARGED", "HOSTTASKS", "FLAGS")


def _range(r: tuple[int, int]) -> str:
    return f"{r[0]}-{r[0] + r[1] - 1} ({r[1]})"


def run_accounting(args: argparse.Namespace) -> int:
    if args.tree and args.by == "uid":
        raise UserError("--tree goes with --by userns")
    snap = take_snapshot(args)
    empty = accounting.Accounting(snap.kernel, (), ())
    cols_all = userns_columns(empty) if args.by == "userns" else UID_COLUMNS
    if args.list_columns:
        print_columns_help(cols_all)
        return 0
    default = USERNS_DEFAULT if args.by == "userns" else UID_DEFAULT
    chosen_names = [c.name for c in pick_columns(args, cols_all, default)]
    need_limits = args.json or any(n.startswith("MAX_") for n in chosen_names)
    acct = accounting.compute(snap, limits=need_limits)
    if args.json:
        print_json(acct.to_dict())
        report_errors(snap)
        return 0
    if args.by == "userns":
        cols = [c for c in userns_columns(acct) if c.name in chosen_names]
        cols.sort(key=lambda c: chosen_names.index(c.name))
        by_inode = {a.namespace.inode: a for a in acct.users}
        if args.tree:  # the tree prefix reads better on a left-aligned first column
            cols = [c._replace(right=False) if i == 0 else c for i, c in enumerate(cols)]
            roots = [a for a in acct.users if a.namespace.parent not in by_inode]
            rows = tree_rows(roots, lambda a: [by_inode[c.inode] for c in snap.children(a.namespace.inode)
                                               if c.inode in by_inode])
        else:
            rows = [("", a) for a in acct.users]
        render(rows, cols, args)
    else:
        cols_u = pick_columns(args, UID_COLUMNS, UID_DEFAULT)
        render([("", (a, u)) for a in acct.users for u in a.uids], cols_u, args)
    notes = sys.stderr if args.raw else sys.stdout  # raw output stays one table for scripts
    if acct.overlaps:
        print("\nUser namespaces sharing host ids:", file=notes)
        for (kind, ranges, meaning), members in _shared_groups(acct.overlaps):
            who = " and ".join(", ".join(f"user:[{m}]" for m in members).rsplit(", ", 1))
            print(f"  {who} share host {kind}s {', '.join(_range(r) for r in ranges)}: {meaning}", file=notes)
    if acct.warnings:
        print("\nHost root mapped into a user namespace:", file=notes)
        for w in acct.warnings:
            print(f"  {w}", file=notes)
    report_errors(snap)
    return 0


def _shared_groups(overlaps: Sequence[accounting.Overlap]) -> list[tuple[tuple[str, Any, str], list[int]]]:
    """Pairs that share the same host ids, joined into groups (connected pairs): forty containers
    with one map are one line, not 780 pairs. The JSON keeps every pair."""
    groups: dict[tuple[str, Any, str], list[set[int]]] = {}
    for o in overlaps:
        sets = groups.setdefault((o.kind, o.ranges, o.meaning), [])
        touching = [s for s in sets if o.a in s or o.b in s]
        merged = {o.a, o.b}.union(*touching)
        sets[:] = [s for s in sets if s not in touching] + [merged]
    return [(key, sorted(members)) for key, sets in groups.items() for members in sets]


# --- nsfs shift / unshift ----------------------------------------------------------------------


def _maps(texts: list[str] | None) -> IdMap:
    return tuple(idmap.parse_map(t) for t in texts or ())


def _userns(spec: str, args: argparse.Namespace) -> tuple[Namespace, Any]:
    snap = take_snapshot(args)
    ns = find(snap, spec, "user")
    if ns.owner is None and ns.parent is None:
        raise UserError(f"{spec} is the initial user namespace, whose identity map cannot idmap a mount")
    return ns, snap


def run_shift(args: argparse.Namespace) -> int:
    if args.resume + args.rollback + args.status > 1:
        raise UserError("give one of --resume, --rollback and --status")
    if args.resume or args.rollback or args.status:
        if not args.chown:
            raise UserError("--resume, --rollback and --status go with --chown")
        if args.map or args.userns or args.gid_map:
            raise UserError("--resume/--rollback/--status use the maps recorded in the journal; give no --map/--userns")
        return _chown_followup(args)
    if bool(args.map) == bool(args.userns):
        raise UserError("give the id mapping with --map FROM:TO:COUNT (repeatable) or --userns NS, not both")
    if args.gid_map and not args.map:
        raise UserError("--gid-map goes with --map")
    return _shift_chown(args) if args.chown else _shift_idmapped(args)


def _shift_chown(args: argparse.Namespace) -> int:
    if args.dst is not None:
        raise UserError("--chown rewrites SRC in place; give no DST")
    if args.recursive or args.read_only:
        raise UserError("--recursive and --read-only apply to idmapped mounts, not to --chown")
    uid_map, gid_map = _chown_maps(args)
    status = chown_shift.chown_shift(args.src, uid_map, gid_map, args.journal, args.jobs, _progress(args))
    return _report_chown(status, args, "shifted")


def _shift_idmapped(args: argparse.Namespace) -> int:
    if args.journal or args.jobs:
        raise UserError("--journal and --jobs go with --chown")
    if args.dst is None:
        raise UserError("give DST, the directory to mount the shifted view on (or --chown to rewrite SRC in place)")
    if args.map:
        uid_map = _maps(args.map)
        gid_map = _maps(args.gid_map) or uid_map
        made = idmap.shift_with_map(args.src, args.dst, uid_map, gid_map, args.recursive, args.read_only)
        via = f"map uid {_fmt_map(uid_map)} gid {_fmt_map(gid_map)}"
    else:
        made, via = _shift_through_userns(args)
    if args.json:
        print_json({"src": os.path.realpath(args.src), "dst": made.mountpoint, "fstype": made.fstype,
                    "mount_id": made.mount_id, "options": list(made.options), "via": via})
    else:
        print(f"{args.src} is mounted at {made.mountpoint} ({made.fstype}), idmapped through {via}")
    return 0


def _shift_through_userns(args: argparse.Namespace) -> tuple[idmap.MountInfo, str]:
    ns, snap = _userns(args.userns, args)
    try:
        fd = handles.open_namespace(ns, snap)
    except handles.Gone as e:
        raise UserError(str(e)) from None
    try:
        made = idmap.shift(args.src, args.dst, fd, args.recursive, args.read_only)
    finally:
        os.close(fd)
    return made, f"user:[{ns.inode}] (uid {_fmt_map(ns.uid_map)} gid {_fmt_map(ns.gid_map)})"


def _chown_maps(args: argparse.Namespace) -> tuple[IdMap, IdMap]:
    if args.map:
        uid_map = _maps(args.map)
        return uid_map, _maps(args.gid_map) or uid_map
    ns, _snap = _userns(args.userns, args)
    if not ns.uid_map or not ns.gid_map:
        raise UserError(f"user:[{ns.inode}] has no uid or gid map yet")
    return tuple(ns.uid_map), tuple(ns.gid_map)


class _Bar:
    """chown_shift's progress on a terminal: a tqdm bar on stderr (`shifting [###   ] 40% 4000/10000 files`)."""

    def __init__(self) -> None:
        self.bar: tqdm[Never] | None = None

    def start(self, label: str, total: int, done: int) -> Callable[[int], None]:
        from tqdm import tqdm

        size = shutil.get_terminal_size()
        bar: tqdm[Never] = tqdm(total=total, initial=done, desc=label, ascii=" #", file=sys.stderr, mininterval=0.1,
                               ncols=size.columns, nrows=size.lines,  # (a terminal of size 0 gets 80x24)
                               bar_format="{desc} [{bar:30}] {percentage:3.0f}% {n}/{total} files {rate_fmt}")
        self.bar = bar

        def advance(n: int) -> None:
            bar.update(n)
        return advance

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _progress(args: argparse.Namespace) -> chown_shift.Progress | None:
    return None if args.no_progress or not sys.stderr.isatty() else _Bar()


def _chown_followup(args: argparse.Namespace) -> int:
    if args.dst is not None:
        raise UserError("--chown rewrites SRC in place; give no DST")
    if args.status:
        return _report_chown(chown_shift.status(args.src, args.journal), args, "status")
    if args.resume:
        return _report_chown(chown_shift.resume(args.src, args.journal, args.jobs, _progress(args)), args, "resumed")
    return _report_chown(chown_shift.rollback(args.src, args.journal, args.jobs, _progress(args)), args, "rolled back")


def _report_chown(status: chown_shift.Status, args: argparse.Namespace, verb: str) -> int:
    if args.json:
        info = status.to_dict()
        info["conflict_examples"] = [list(c) for c in chown_shift.conflicts(status.journal)] if status.conflicts else []
        print_json(info)
    else:
        print(f"{status.root}: {verb}; state {status.state}, {status.done}/{status.total} recorded files shifted, "
              f"{status.conflicts} conflicts (journal {status.journal})")
        for path, why in chown_shift.conflicts(status.journal) if status.conflicts else []:
            print(f"  conflict: {path}: {why}", file=sys.stderr)
    return 1 if status.conflicts else 0


def run_unshift(args: argparse.Namespace) -> int:
    if args.chown:
        if args.lazy or args.force:
            raise UserError("--lazy and --force apply to idmapped mounts, not to --chown")
        return _report_chown(chown_shift.rollback(args.dst, args.journal, args.jobs, _progress(args)), args, "unshifted")
    if args.journal or args.jobs:
        raise UserError("--journal and --jobs go with --chown")
    done = idmap.unshift(args.dst, args.lazy, args.force)
    for path in done:
        print(f"unmounted {path}")
    return 0


# --- argument parsing --------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    if command == "accounting":
        parser.add_argument("--by", choices=("userns", "uid"), default="userns",
                            help="one row per user namespace (default) or per uid in each")
        parser.add_argument("--tree", action="store_true", help="show user namespaces as a tree")
        add_table_options(parser, userns_columns(accounting.Accounting("", (), ())), USERNS_DEFAULT)
        add_source_options(parser)
        return
    chown = parser.add_argument_group("--chown mode (filesystems without idmapped mounts)")
    if command == "shift":
        parser.add_argument("src", metavar="SRC", help="the directory (or file) to shift")
        parser.add_argument("dst", metavar="DST", nargs="?", help="an empty directory to mount the shifted view on")
        parser.add_argument("--map", action="append", metavar="FROM:TO:COUNT",
                            help="ids FROM.. on disk are seen (or rewritten) as TO..; repeatable; also the gid map "
                                 "unless --gid-map is given")
        parser.add_argument("--gid-map", action="append", metavar="FROM:TO:COUNT", help="a separate gid map; repeatable")
        parser.add_argument("--userns", metavar="NS", help="use the maps of this user namespace (name, inode, PID:user, ...)")
        parser.add_argument("--recursive", action="store_true", help="idmap the mounts below SRC too")
        parser.add_argument("--read-only", action="store_true", help="make the shifted mount read-only")
        chown.add_argument("--chown", action="store_true", help="rewrite the ownership of SRC in place instead of mounting")
        chown.add_argument("--resume", action="store_true", help="finish an interrupted --chown run")
        chown.add_argument("--rollback", action="store_true", help="undo a --chown run, interrupted or not")
        chown.add_argument("--status", action="store_true", help="show the journal's state")
    else:
        parser.add_argument("dst", metavar="DST", help="the idmapped mount to remove (with --chown: the tree to restore)")
        parser.add_argument("--lazy", action="store_true", help="detach now, clean up when no longer busy (MNT_DETACH)")
        parser.add_argument("--force", action="store_true", help="unmount DST even if it is not an idmapped mount")
        chown.add_argument("--chown", action="store_true", help="undo a --chown shift from its journal")
    chown.add_argument("--journal", metavar="PATH", help=f"the journal (default: under {chown_shift.DEFAULT_JOURNAL_DIR})")
    chown.add_argument("--jobs", type=_positive, metavar="N", help="threads doing the per-file work (default: one per CPU)")
    chown.add_argument("--no-progress", action="store_true", help="no progress bar, even on a terminal")
    parser.add_argument("-J", "--json", action="store_true", help="JSON output")
    if command == "shift":
        add_source_options(parser)  # for --userns


_positive = whole("N", 1, 4096)


def run(args: argparse.Namespace) -> int:
    try:
        if args.command == "accounting":
            return run_accounting(args)
        if os.geteuid() != 0:
            raise UserError("needs root (CAP_SYS_ADMIN to mount, CAP_CHOWN to rewrite ownership)")
        if args.command == "shift":
            return run_shift(args)
        return run_unshift(args)
    except ShiftError as e:
        raise UserError(str(e)) from None
    except KeyboardInterrupt:
        if getattr(args, "chown", False):
            raise UserError("interrupted; the journal records how far it got: finish with --resume or undo with "
                            "--rollback", status=130) from None
        raise
    except BrokenPipeError:
        raise
    except OSError as e:
        where = f"{os.fsdecode(e.filename)}: " if isinstance(e.filename, (str, bytes)) else ""
        raise UserError(f"{where}{e.strerror or e}") from None
