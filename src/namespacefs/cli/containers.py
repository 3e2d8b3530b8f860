"""`nsfs containers`, `enter`, `kill`, `pin`, `unpin`, `checkpoint`, `restore`: argument parsing
and output only; the work is done by namespacefs.containers and namespacefs.ops."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from namespacefs import containers, core, kernel, targets
from namespacefs.cli import Parser, UserError, duration, whole
from namespacefs.cli.common import PrintVersion, chosen_sources, daemon_snapshot, find, report_errors, verbose_scan
from namespacefs.cli.output import Column, add_table_options, pick_columns, print_columns_help, print_json, render, tree_rows
from namespacefs.containers import Container, ContainerTree
from namespacefs.handles import Gone, open_namespace
from namespacefs.kernel import NS_TYPES
from namespacefs.model import Namespace, Snapshot
from namespacefs.names import containers as cnames
from namespacefs.ops import checkpoint as ckpt
from namespacefs.ops import enter as ops_enter
from namespacefs.ops import kill as ops_kill
from namespacefs.ops import pin as ops_pin
from namespacefs.syntax import is_number, printable

#: nsenter's letters for the namespace types
LETTERS = {"mnt": "m", "uts": "u", "ipc": "i", "net": "n", "pid": "p", "user": "U", "cgroup": "C", "time": "T"}
LONG = {"mnt": "mount", "uts": "uts", "ipc": "ipc", "net": "net", "pid": "pid", "user": "user",
        "cgroup": "cgroup", "time": "time"}


class View:
    """What the columns need: the container, its parent and the snapshot."""

    def __init__(self, c: Container, tree: ContainerTree, snap: Snapshot) -> None:
        self.c, self.tree, self.snap = c, tree, snap

    def own(self) -> str:
        return ",".join(t for t in NS_TYPES if t in self.c.own_namespaces(self.tree.parent(self.c)))

    def command(self) -> str:
        p = self.snap.processes.get(self.c.init)
        return p.command if p else ""


COLUMNS: list[Column[View]] = [
    Column("NAME", "the container's name (the tree shows its nesting)", lambda v: v.c.name or "/", trunc=True),
    Column("PATH", "the container's path", lambda v: v.c.path, trunc=True),
    Column("ENGINE", "who runs it (host, runc, docker, systemd-nspawn, bwrap, ..., unknown)", lambda v: v.c.engine, trunc=True),
    Column("ID", "the engine's id for it", lambda v: (v.c.engine_id or "")[:12], trunc=True),
    Column("INIT", "host pid of its init", lambda v: v.c.init, right=True),
    Column("PIDS", "number of its own processes", lambda v: len(v.c.pids), right=True),
    Column("NPROCS", "processes with those of nested containers", lambda v: len(v.c.all_pids), right=True),
    Column("NS", "the namespace types it does not share with its parent", View.own, trunc=True),
    Column("KEY", "what a rename is stored under", lambda v: v.c.key, trunc=True),
    Column("COMMAND", "its init's command line", View.command, trunc=True),
]
DEFAULT = ("NAME", "ENGINE", "ID", "INIT", "PIDS", "NS", "COMMAND")
DEFAULT_LIST = ("PATH", "ENGINE", "ID", "INIT", "PIDS", "NS", "COMMAND")


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    if command in ("containers", "enter", "kill", "checkpoint", "restore"):
        parser.add_argument("--sources", metavar="LIST", default="process",
                            help="discovery sources (default: process, which is all containers need)")
        parser.add_argument("--oci-root", metavar="DIR", action="append", default=[],
                            help="another OCI runtime state directory to read (runc --root DIR); repeatable")
        parser.add_argument("--db", metavar="PATH", help="the names database (default: the naming core's)")
    if command == "containers":
        parser.add_argument("-v", "--verbose", action="store_true",
                            help="name each entry that could not be read (pid, path and reason), on stderr")
        parser.add_argument("-l", "--list", action="store_true", help="a flat list with paths instead of the tree")
        parser.add_argument("--rename", nargs=2, metavar=("TARGET", "NAME"), help="give a container a name that is kept")
        parser.add_argument("--forget", metavar="TARGET", help="drop a container's stored name")
        add_table_options(parser, COLUMNS, DEFAULT)
    elif command == "enter":
        parser.__class__ = _EnterParser  # nsenter's optional arguments (-nFILE, -w/tmp) need getopt's reading
        _enter_options(parser)
        parser.add_argument("-V", "--version", action=PrintVersion)
        parser.add_argument("-t", "--target", dest="target_spec", type=_target, metavar="PID[:INODE]",
                            help="the target process, as nsenter takes it (instead of TARGET)")
        parser.add_argument("target", nargs="?", help="a container (path, name or engine id), a pid, or a namespace")
        parser.add_argument("cmd", nargs=argparse.REMAINDER, metavar="[OPTIONS] -- CMD",
                            help="the command, after -- (default: the target's shell or /bin/sh)")
    elif command == "kill":
        parser.add_argument("target", help="a container (path, name or engine id) or a pid in it")
        parser.add_argument("-s", "--signal", default="KILL", help="signal name or number (default KILL)")
        parser.add_argument("--dry-run", action="store_true", help="list what would be killed, kill nothing")
        parser.add_argument("--timeout", type=duration, default=5.0, help="seconds to wait for every process to go")
        parser.add_argument("-J", "--json", action="store_true", help="JSON report")
    elif command == "pin":
        parser.add_argument("ns", metavar="NS", help="the namespace (inode, TYPE:[INODE], PID:TYPE, path, id or name)")
        parser.add_argument("path", metavar="PATH", help="the file to bind-mount it on (created if missing)")
        parser.add_argument("-t", "--type", dest="nstype", choices=NS_TYPES, help="the namespace's type")
    elif command == "unpin":
        parser.add_argument("path", metavar="PATH", help="a pinned namespace file")
        parser.add_argument("--keep", action="store_true", help="keep the (empty) file after unmounting")
    elif command == "checkpoint":
        parser.add_argument("target", help="a container (path, name or engine id) or a pid in it")
        parser.add_argument("dir", metavar="DIR", help="where to write the checkpoint")
        parser.add_argument("--stop", action="store_true", help="let CRIU stop the container after dumping it")
        parser.add_argument("-J", "--json", action="store_true", help="JSON report")
    elif command == "restore":
        parser.add_argument("dir", metavar="DIR", help="a directory written by nsfs checkpoint")


def _enter_options(parser: argparse.ArgumentParser) -> None:
    """nsenter's options (util-linux 2.42 nsenter(1)); _nsenter_words turns its attached optional
    arguments (-nFILE, --net=FILE, -w/tmp, -r/srv) into the hidden options below first."""
    for t in NS_TYPES:
        parser.add_argument(f"-{LETTERS[t]}", f"--{LONG[t]}", dest=f"ns_{t}", action="store_true",
                            help=f"enter the {t} namespace (--{LONG[t]}=FILE: the namespace of that file; "
                                 f"--{LONG[t]}=:NSID: by its 64-bit id)")
        parser.add_argument(f"--{LONG[t]}-file", dest=f"file_{t}", metavar="FILE", help=argparse.SUPPRESS)
    parser.add_argument("-a", "--all", action="store_true", help="enter every namespace (the default for a pid or container)")
    parser.add_argument("-S", "--setuid", type=_id_or_follow("UID"), metavar="UID",
                        help="run as this uid ('follow': the target's)")
    parser.add_argument("-G", "--setgid", type=_id_or_follow("GID"), metavar="GID",
                        help="run as this gid ('follow': the target's)")
    parser.add_argument("--preserve-credentials", action="store_true",
                        help="do not become root of an entered user namespace (keep our uid, gid and groups)")
    parser.add_argument("--keep-caps", action="store_true",
                        help="with the user namespace: keep the capabilities it grants across exec")
    parser.add_argument("--user-parent", action="store_true",
                        help="enter the parent user namespace of the user namespace (or the owner of another)")
    parser.add_argument("-N", "--net-socket", type=whole("FD", 0, 2**31 - 1), metavar="FD",
                        help="enter the net namespace of the target's socket FD")
    parser.add_argument("--wd", metavar="DIR",
                        help="working directory, resolved inside (default: the target's; -w alone: the target's "
                             "even without its mount namespace)")
    parser.add_argument("-W", "--wdns", dest="wd", metavar="DIR", help="working directory, resolved inside (as --wd DIR)")
    parser.add_argument("--wd-target", dest="follow_wd", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("-r", "--root", dest="follow_root", action="store_true",
                        help="the target's root directory (the default with its mount namespace); -rDIR, --root=DIR: "
                             "this directory (opened before entering)")
    parser.add_argument("--root-dir", dest="root_dir", metavar="DIR", help=argparse.SUPPRESS)
    parser.add_argument("--keep-root", action="store_true", help="keep our root directory in the mount namespace")
    parser.add_argument("-e", "--env", action="store_true", help="the target's environment instead of ours")
    parser.add_argument("-F", "--no-fork", action="store_true",
                        help="do not fork again before exec (a pid namespace then applies to the command's children only)")
    parser.add_argument("-c", "--join-cgroup", action="store_true", help="join the target's cgroup (v2)")
    parser.add_argument("-Z", "--follow-context", action="store_true",
                        help="run with the target's SELinux context (a no-op, said on stderr, where SELinux is off)")
    parser.add_argument("--no-netns-exec", action="store_true",
                        help="a net namespace entered by name: do not do what `ip netns exec NAME` does "
                             "(a private /sys and the /etc/netns/NAME/* bind mounts)")


def _id_or_follow(what: str) -> Callable[[str], int | str]:
    """An argparse type: a uid or gid (ASCII digits, as cli.whole) or 'follow' (nsenter 2.42)."""
    number = whole(what, 0, 2**32 - 2)

    def parse(text: str) -> int | str:
        return text if text == "follow" else number(text)

    parse.__name__ = "int"  # argparse's message: "invalid int value: 'TEXT'"
    return parse


def _target(text: str) -> tuple[int, int | None]:
    """-t PID or -t PID:INODE (nsenter 2.42: the inode of the process's pidfd)."""
    pid, sep, inode = text.partition(":")
    if not is_number(pid) or (sep and not is_number(inode)):
        raise argparse.ArgumentTypeError(f"invalid PID argument: {printable(text)}")
    return whole("PID", 1, 2**22)(pid), int(inode) if sep else None


#: nsenter's short options (getopt "+ahVt:m::u::i::n::N:p::C::U::T::S:G:r::w::W::ecFZ"): those whose
#: argument is optional (only ever attached) and those that need one
_OPTIONAL_ARG = {**{LETTERS[t]: f"--{LONG[t]}-file" for t in NS_TYPES}, "r": "--root-dir", "w": "--wd"}
_REQUIRED_ARG = frozenset("tSGNW")
_LONG_OPTIONAL = {**{f"--{LONG[t]}": f"--{LONG[t]}-file" for t in NS_TYPES}, "--root": "--root-dir", "--wd": "--wd"}
_LONG_REQUIRED = frozenset({"--target", "--setuid", "--setgid", "--net-socket", "--wdns", "--sources",
                            "--oci-root", "--db"})


def _nsenter_words(words: list[str]) -> list[str]:
    """The option words before TARGET (or nsenter's command) as getopt reads them, in the forms the
    parser takes: -nFILE and --net=FILE become --net-file FILE, -mu is -m with the file 'u' (as in
    nsenter), -w alone the target's working directory and -w/tmp that directory. `--wd DIR` (two
    words) keeps its older nsfs meaning. Words from the first non-option on are left alone."""
    out: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        if word == "--" or not word.startswith("-") or word == "-":
            return out + words[i:]
        i += 1
        if word.startswith("--"):
            name, eq, value = word.partition("=")
            if name in _LONG_OPTIONAL:
                if eq:
                    out += [_LONG_OPTIONAL[name], value]
                elif name == "--wd" and i < len(words) and not words[i].startswith("-"):
                    out += ["--wd", words[i]]  # the older nsfs form
                    i += 1
                else:
                    out.append("--wd-target" if name == "--wd" else name)
            elif name in _LONG_REQUIRED and not eq and i < len(words):
                out += [word, words[i]]
                i += 1
            else:
                out.append(word)
            continue
        for k, letter in enumerate(word[1:], start=1):
            rest = word[k + 1:]
            if letter in _OPTIONAL_ARG:
                if rest:
                    out += [_OPTIONAL_ARG[letter], rest.removeprefix("=")]
                else:
                    out.append("--wd-target" if letter == "w" else f"-{letter}")
                break
            if letter in _REQUIRED_ARG:
                if rest:
                    out += [f"-{letter}", rest]
                elif i < len(words):
                    out += [f"-{letter}", words[i]]
                    i += 1
                else:
                    out.append(f"-{letter}")
                break
            out.append(f"-{letter}")
    return out


class _EnterParser(Parser):
    """`nsfs enter`'s parser: reads the words as nsenter's getopt does first (_nsenter_words)."""

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        words = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(_nsenter_words(words), namespace)


class _OptionsAfterTarget(argparse.ArgumentParser):
    """Parses the options that follow TARGET; reports a mistake once, as a UserError, instead of
    printing a second usage text and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"bad options before --: {message}")


def _split_enter(args: argparse.Namespace) -> list[str]:
    """Options may also follow TARGET (`nsfs enter web -u -- hostname`): those before `--` are
    parsed here; what follows `--` is the command."""
    words = list(args.cmd)
    if "--" not in words:
        return words
    cut = words.index("--")
    if cut:
        extra = _OptionsAfterTarget(prog="nsfs enter", add_help=False, exit_on_error=False)
        _enter_options(extra)
        try:
            more, unknown = extra.parse_known_args(_nsenter_words(words[:cut]))
        except argparse.ArgumentError as e:
            raise UserError(f"bad options before --: {e}") from None
        if unknown:
            raise UserError(f"unknown options before --: {' '.join(unknown)}")
        for key, value in vars(more).items():
            if value not in (None, False):
                setattr(args, key, value)
    return words[cut + 1:]


def run(args: argparse.Namespace) -> int:
    handler = {"containers": _containers, "enter": _enter, "kill": _kill, "pin": _pin, "unpin": _unpin,
               "checkpoint": _checkpoint, "restore": _restore}[args.command]
    return handler(args)


# --- helpers -----------------------------------------------------------------------------------


def _roots(args: argparse.Namespace) -> list[tuple[str, str]] | None:
    if not args.oci_root:
        return None
    from namespacefs.containers import oci
    return list(oci.DEFAULT_ROOTS) + [(os.path.abspath(r), "runc") for r in args.oci_root]


def _names(args: argparse.Namespace) -> dict[str, str]:
    try:
        return cnames.load(args.db)
    except cnames.NamesUnavailable as e:
        if args.db:
            raise UserError(str(e)) from None
        print(f"nsfs {args.command}: stored container names are not used: {e}", file=sys.stderr)
        return {}  # the engines' and the default names still work


def _tree(args: argparse.Namespace) -> tuple[Snapshot, ContainerTree]:
    verbose_scan(args)
    snap = core.snapshot(chosen_sources(args.sources), db=args.db, fresh=bool(getattr(args, "verbose", False)),
                         provider=daemon_snapshot)
    return snap, containers.find(snap, names=_names(args), oci_roots=_roots(args))


def _container(tree: ContainerTree, snap: Snapshot, spec: str, allow_pid: bool = True) -> Container:
    """The container spec names (targets' grammar): a path, a name, an engine id or, all ASCII
    digits, a pid in it (never a name)."""
    if not spec.strip():  # "" would otherwise match the host, whose name is empty
        raise UserError("an empty container name; give a path, a name, an engine id or a pid")
    try:
        target = targets.resolve_target(snap, spec, tree, pids=allow_pid, namespaces=False)
    except targets.NotFound as e:
        raise UserError(f"{e} (see nsfs containers)") from None
    c = target.container if target.container is not None else tree.of_pid(target.pid or 0)
    if c is None:
        raise UserError(f"process {target.pid} is in no container")
    return c


def _verified_pid(snap: Snapshot, pid: int) -> int:
    """pid, checked through a pidfd to still be the process of the snapshot (same namespaces), so a
    pid recycled since the scan is never entered."""
    try:
        fd = kernel.pidfd_open(pid)
    except OSError:
        raise UserError(f"process {pid} has gone") from None
    try:
        seen = snap.processes[pid].namespaces
        for t in NS_TYPES:
            if t in seen and os.stat(f"/proc/{pid}/ns/{t}").st_ino != seen[t]:
                raise UserError(f"process {pid} is not the one the scan saw (its {t} namespace changed)")
        kernel.pidfd_send_signal(fd, 0)  # still alive after the checks: they were of this process
    except OSError:
        raise UserError(f"process {pid} has gone") from None
    finally:
        os.close(fd)
    return pid


# --- containers --------------------------------------------------------------------------------


def _containers(args: argparse.Namespace) -> int:
    if args.list_columns:
        print_columns_help(COLUMNS)
        return 0
    snap, tree = _tree(args)
    if args.rename or args.forget is not None:
        spec = args.rename[0] if args.rename else args.forget
        target = _container(tree, snap, spec)
        if target.path == "/":
            raise UserError("the host ('/') has no name to change")
        try:
            if args.rename:
                cnames.rename(args.db, target.key, args.rename[1])
                print(f"{target.path} is now called {args.rename[1]} (kept under {target.key})")
            elif cnames.forget(args.db, target.key):
                print(f"{target.path}: stored name dropped")
            else:
                print(f"{target.path} had no stored name")
        except (cnames.NamesUnavailable, ValueError) as e:
            raise UserError(str(e)) from None
        return 0
    if args.json:
        print_json({"boot_id": snap.boot_id, "taken_at": snap.taken_at, **tree.to_dict()})
        return 0
    cols = pick_columns(args, COLUMNS, DEFAULT_LIST if args.list else DEFAULT)
    if args.list:
        rows = [("", View(c, tree, snap)) for c in tree]
    else:
        rows = [(p, View(c, tree, snap)) for p, c in tree_rows([tree.root], lambda c: list(c.children))]
    render(rows, cols, args)
    report_errors(snap)
    return 0


# --- enter -------------------------------------------------------------------------------------


def _enter(args: argparse.Namespace) -> int:
    args.target_pid, target_inode = args.target_spec or (None, None)
    if args.target_pid is not None and not ops_enter.process_exists(args.target_pid):
        raise UserError(f"no process {args.target_pid} (-t takes a pid)")
    files = {t: getattr(args, f"file_{t}") for t in NS_TYPES if getattr(args, f"file_{t}")}
    if args.target_pid is None and (files or args.net_socket is not None) and args.target is not None \
            and not any(getattr(args, f"ns_{t}") for t in NS_TYPES):
        # nsenter --net=FILE CMD: no target, every namespace named by its file; TARGET is the command
        args.cmd = [w for w in (args.target, *args.cmd)]
        args.cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        args.target = None
        return _enter_files(args, files)
    if args.target_pid is not None:
        # nsenter's form: every option precedes -t PID's command, which argparse has split into
        # TARGET and the rest (a `--` before it is consumed)
        cmd = [args.target, *args.cmd] if args.target is not None else list(args.cmd)
        args.target = str(args.target_pid)
    elif args.target is None:
        raise UserError("no target; give a container, a pid or a namespace (or -t PID)")
    else:
        cmd = _split_enter(args)
    chosen = tuple(t for t in NS_TYPES if getattr(args, f"ns_{t}") or t in files)
    if args.net_socket is not None:
        chosen = tuple(dict.fromkeys((*chosen, "net")))
    snap = core.snapshot(chosen_sources(args.sources), db=args.db, provider=daemon_snapshot)
    tree = containers.find(snap, names=_names(args), oci_roots=_roots(args))
    pid: int | None = None
    fds: dict[str, int] = {}
    target_ns: Namespace | None = None  # the target, when it is a namespace
    spec = args.target
    if not spec.strip():
        raise UserError("an empty target; give a container, a pid or a namespace")
    target, snap = _enter_target(args, snap, tree, spec)
    if target.pid is not None:
        pid = target.pid
    elif target.container is not None:
        pid = target.container.init
        if target.container.group:  # a pod: what its members share, through one of them
            chosen = chosen or tuple(t for t in NS_TYPES if t in target.container.own_namespaces(tree.root))
    else:
        ns = target_ns = target.namespace
        assert ns is not None
        chosen = chosen or (ns.type,)
        if ns.processes:
            pid = ns.processes[0]
        else:
            if chosen != (ns.type,):
                raise UserError(f"{spec} has no process; only its own {ns.type} namespace can be entered")
            try:
                fds[ns.type] = open_namespace(ns, snap)
            except Gone as e:
                raise UserError(str(e)) from None
    if pid is not None:
        pid = _verified_pid(snap, pid)
    netns = _netns_name(target_ns, spec, chosen, args)
    try:
        if pid is not None and target_inode is not None:
            ops_enter.check_pidfs_inode(pid, target_inode)
        fds.update(_explicit_fds(args, pid, files, snap))
        types = chosen if chosen and not args.all else NS_TYPES
        if pid is not None:
            types = ops_enter.needed_types(pid, [t for t in types if t not in fds])
        types = tuple(dict.fromkeys((*types, *fds)))
        if not types:
            raise UserError(f"{spec} is in all of our own namespaces: nothing to enter")
        plan = _plan(args, types, pid, fds, netns)
        argv = cmd or ops_enter.default_shell(pid, in_its_root="mnt" in types and not args.keep_root)
        sys.stdout.flush()
        return ops_enter.run(plan, argv)
    except ops_enter.EnterError as e:
        raise UserError(str(e)) from None
    finally:
        for fd in fds.values():
            os.close(fd)


def _enter_files(args: argparse.Namespace, files: dict[str, str]) -> int:
    """nsenter's form without a target: each namespace from its file (--net=/run/netns/web CMD)."""
    fds: dict[str, int] = {}
    try:
        fds.update(_explicit_fds(args, None, files, None))
        if args.env or args.join_cgroup:
            raise UserError("-e and -c need a target process (-t PID)")
        name = None
        if set(fds) == {"net"} and not args.no_netns_exec:
            name = _netns_of_path(files.get("net"))
        plan = _plan(args, tuple(t for t in ops_enter.JOIN_ORDER if t in fds), None, fds, name)
        sys.stdout.flush()
        return ops_enter.run(plan, args.cmd or ["/bin/sh"])
    except ops_enter.EnterError as e:
        raise UserError(str(e)) from None
    finally:
        for fd in fds.values():
            os.close(fd)


def _explicit_fds(args: argparse.Namespace, pid: int | None, files: dict[str, str],
                  snap: Snapshot | None) -> dict[str, int]:
    """The namespaces named on the command line rather than taken from the target: --TYPE=FILE,
    --TYPE=:NSID (by its 64-bit id), -N FD (a socket's net namespace), --user-parent."""
    fds: dict[str, int] = {}
    try:
        for t, path in files.items():
            if path.startswith(":"):  # nsenter 2.42: by id (a file starting with ':' is given as ./:x)
                snap = snap or core.snapshot(chosen_sources("process,fd,bindmount"), db=args.db)
                try:
                    fds[t] = open_namespace(find(snap, f"id:{path[1:]}", t), snap)
                except Gone as e:
                    raise UserError(str(e)) from None
            else:
                fds[t] = ops_enter.open_namespace_file(path, t)
        if args.net_socket is not None:
            if pid is None:
                raise UserError("-N/--net-socket needs a target process (-t PID)")
            fds["net"] = ops_enter.socket_netns(pid, args.net_socket)
        if args.user_parent:
            fds["user"] = _user_parent(args, pid, fds)
    except BaseException:
        for fd in fds.values():
            os.close(fd)
        raise
    return fds


def _user_parent(args: argparse.Namespace, pid: int | None, fds: dict[str, int]) -> int:
    """--user-parent: the parent of the user namespace to enter (--user), else the owning user
    namespace of another namespace to enter (nsenter 2.42)."""
    if "user" in fds:
        base, mine = fds.pop("user"), True
    elif pid is not None:
        others = [t for t in NS_TYPES if t != "user" and getattr(args, f"ns_{t}")]
        link = "user" if args.ns_user or not others else others[0]
        if link in fds:
            base, mine = fds[link], False
        else:
            base, mine = ops_enter.open_ns_link(pid, link), True
    elif fds:
        base, mine = next(iter(fds.values())), False
    else:
        raise UserError("--user-parent needs a target process or a namespace file")
    try:
        return ops_enter.user_parent(base)
    finally:
        if mine:
            os.close(base)


def _plan(args: argparse.Namespace, types: tuple[str, ...], pid: int | None, fds: dict[str, int],
          netns: str | None) -> ops_enter.Plan:
    """The Plan of nsenter's options (ops.enter does the work)."""
    uid, gid = args.setuid, args.setgid
    if pid is not None:
        if "follow" in (uid, gid):
            ids = ops_enter.target_ids(pid)
            if ids is None:
                raise UserError(f"-S/-G follow: the ids of process {pid} cannot be read")
            uid = ids[0] if uid == "follow" else uid
            gid = ids[1] if gid == "follow" else gid
    elif "follow" in (uid, gid):
        raise UserError("-S/-G follow needs a target process (-t PID)")
    if args.follow_context:
        context = ops_enter.selinux_context(pid) if pid is not None else None
        if context is None:
            print("nsfs enter: -Z: SELinux is off here (or no target): there is no context to follow; going on",
                  file=sys.stderr)
    else:
        context = None
    return ops_enter.Plan(
        types, pid, fds, uid, gid, args.wd, not args.keep_root,
        follow_wd=args.follow_wd, root=args.root_dir, fork=not args.no_fork,
        preserve_credentials=args.preserve_credentials,
        env=ops_enter.target_environment(pid) if args.env and pid is not None else None,
        keep_caps=args.keep_caps, selinux_context=context,
        cgroup=ops_enter.target_cgroup(pid) if args.join_cgroup and pid is not None else None,
        netns_exec=netns)


def _netns_name(ns: Namespace | None, spec: str, chosen: tuple[str, ...], args: argparse.Namespace) -> str | None:
    """The `ip netns` name of the target when `nsfs enter NAME` acts as `ip netns exec NAME` (the
    default; --no-netns-exec turns it off): the target is a net namespace, only it is entered, and
    it is mounted under /run/netns (as `ip netns add` does)."""
    if ns is None or ns.type != "net" or args.no_netns_exec or args.all or chosen != ("net",):
        return None
    names = sorted({n for h in ns.holders if h.kind == "bindmount" and (n := _netns_of_path(h.path))})
    if len(names) > 1 and spec in names:  # pinned under several names: the one the user gave
        return spec
    return names[0] if names else None


def _ip_netns_path(snap: Snapshot, spec: str) -> str:
    """An `ip netns` name (`nsfs enter web` for /run/netns/web) where no namespace has that name."""
    if "/" in spec or ":" in spec or is_number(spec) or not os.path.exists(f"/run/netns/{spec}"):
        return spec
    try:
        find(snap, spec)
    except UserError:
        return f"/run/netns/{spec}"
    return spec


def _netns_of_path(path: str | None) -> str | None:
    """NAME of /run/netns/NAME (or /var/run/netns/NAME), else None."""
    if not path:
        return None
    for root in ("/run/netns/", "/var/run/netns/"):
        if path.startswith(root) and "/" not in path[len(root):] and path[len(root):]:
            return path[len(root):]
    return None


# --- kill --------------------------------------------------------------------------------------


def _enter_target(args: argparse.Namespace, snap: Snapshot, tree: ContainerTree,
                  spec: str) -> tuple[targets.Target, Snapshot]:
    """What enter's TARGET names, and the snapshot it is in. A namespace that no process is in
    (pinned, bound by ip netns, held by an fd) needs the fd and bindmount sources: scanned again
    with them when the process scan does not have it."""
    try:
        return targets.resolve_target(snap, spec, tree, pids=True), snap
    except targets.NotFound as e:
        if args.sources != "process":
            raise UserError(str(e)) from None
    wider = core.snapshot(chosen_sources("process,fd,bindmount"), db=args.db)
    try:
        tree = containers.find(wider, names=_names(args), oci_roots=_roots(args))
        return targets.resolve_target(wider, spec, tree, pids=True), wider
    except targets.NotFound as e:
        raise UserError(str(e)) from None


def _signal(text: str) -> int:
    """A signal as kill(1) takes it: KILL, SIGKILL, 9, RTMIN+3, RTMAX-1."""
    try:
        return ops_kill.parse_signal(text)
    except ValueError as e:
        raise UserError(str(e)) from None


def _kill(args: argparse.Namespace) -> int:
    sig = _signal(args.signal)
    snap, tree = _tree(args)
    target = _container(tree, snap, args.target)
    try:
        report = ops_kill.kill(tree, target, sig, dry_run=args.dry_run, timeout=args.timeout)
    except ops_kill.KillError as e:
        raise UserError(str(e)) from None
    if args.json:
        print_json(report.to_dict())
    elif args.dry_run:
        print(f"would send {ops_kill.signal_name(sig)} to {len(report.pids)} processes in {len(report.containers)} containers:")
        for c in target.walk():
            print(f"  {c.path} ({c.engine})")
            for pid in c.pids:
                p = snap.processes.get(pid)
                print(f"    {pid} {p.command if p else ''}")
    else:
        how = ", ".join(report.frozen_with) or "nothing to freeze"
        print(f"sent {ops_kill.signal_name(sig)} to {len(report.pids)} processes in "
              f"{', '.join(report.containers)} (frozen with {how})")
        print(f"  target: {targets.Target(args.target, container=target).describe()}, "
              f"pids {' '.join(map(str, report.pids))}")
        if report.late:
            print(f"  {len(report.late)} of them appeared while it was being frozen")
        if report.left:
            word = "still alive" if sig == signal.SIGKILL else "still running"
            print(f"  {word}: {' '.join(map(str, report.left))}", file=sys.stderr if sig == signal.SIGKILL else sys.stdout)
    return 1 if report.left and sig == signal.SIGKILL and not args.dry_run else 0


# --- pin / unpin -------------------------------------------------------------------------------


def _pin(args: argparse.Namespace) -> int:
    snap = core.snapshot(chosen_sources("process,fd,bindmount"))
    try:
        target = targets.resolve_target(snap, args.ns, containers.find(snap), nstype=args.nstype)
    except targets.NotFound as e:
        raise UserError(str(e)) from None
    ns = target.namespace
    if target.container is not None:
        if not args.nstype:
            raise UserError(f"{target.describe()} is a container: say which of its namespaces with -t TYPE")
        ns = snap.get(target.container.namespaces[args.nstype])
    if ns is None:
        raise UserError(f"{args.ns}: no such namespace")
    try:
        fd = open_namespace(ns, snap)
    except Gone as e:
        raise UserError(str(e)) from None
    try:
        made = ops_pin.pin(fd, args.path)
    except ops_pin.PinError as e:
        raise UserError(str(e)) from None
    finally:
        os.close(fd)
    print(f"pinned {made.type}:[{made.inode}] at {made.path}")
    return 0


def _unpin(args: argparse.Namespace) -> int:
    try:
        nstype, inode = ops_pin.unpin(args.path, remove=not args.keep)
    except ops_pin.PinError as e:
        raise UserError(str(e)) from None
    print(f"unpinned {nstype}:[{inode}] from {os.path.abspath(args.path)}")
    return 0


# --- checkpoint / restore ----------------------------------------------------------------------


def _checkpoint(args: argparse.Namespace) -> int:
    snap, tree = _tree(args)
    target = _container(tree, snap, args.target)
    if target.path == "/":
        raise UserError("refusing to checkpoint the host ('/'); name a container")
    try:
        report = ckpt.checkpoint(snap, tree, target, args.dir, leave_running=not args.stop)
    except OSError as e:
        raise UserError(f"{args.dir}: {e.strerror}") from None
    data: dict[str, Any] = {"directory": report.directory, "containers": report.containers,
                            "namespaces": report.namespaces, "files": report.files, "dumped": report.dumped,
                            "criu": report.criu.to_dict()}
    failed = report.criu.check_ok and not report.dumped  # CRIU could run, and wrote no image
    if args.json:
        print_json(data)
        if failed:
            raise UserError(f"no process images were written: {report.criu.message}")
        return 0
    print(f"wrote the topology and names of {', '.join(report.containers)} ({report.namespaces} namespaces) "
          f"to {report.directory}")
    if report.dumped:
        print(f"CRIU dumped the processes into {os.path.join(report.directory, 'images')}")
    else:
        print(f"CRIU: {report.criu.message}; no process images were written")
    if failed:
        raise UserError(f"no process images were written: {report.criu.message}")
    return 0


def _restore(args: argparse.Namespace) -> int:
    try:
        _topo, saved = ckpt.load(args.dir)
    except ValueError as e:
        raise UserError(str(e)) from None
    criu = ckpt.criu_state()
    restored = ckpt.criu_restore(args.dir, criu)
    _snap, tree = _tree(args)
    matched = ckpt.match_names(saved, tree, restored)
    try:
        for key, name in matched.renamed:
            cnames.rename(args.db, key, name)
    except (cnames.NamesUnavailable, ValueError) as e:
        raise UserError(f"cannot re-apply the names: {e}") from None
    if restored is not None:
        print(f"CRIU restored the processes (init pid {restored})")
    else:
        print(f"CRIU: {criu.message}; no processes were restored")
    for key, name in matched.renamed:
        print(f"name {name} re-applied to {key}")
    for path in matched.unchanged:
        print(f"{path} still has its saved name")
    for path in matched.unmatched:
        print(f"{path}: no running container to give its name back to", file=sys.stderr)
    return 0 if matched.renamed or matched.unchanged or not matched.unmatched else 1
