"""`nsfs enter`: the target and nsenter's options read into an ops.enter.Plan (the command line itself:
cli.enter_options); deciding what to join and the joining are ops.enter's."""

from __future__ import annotations

import argparse
import os
import sys

from namespacefs import containers, core, targets
from namespacefs.cli import UserError
from namespacefs.cli.common import chosen_sources, find
from namespacefs.cli.containers import _names, _roots
from namespacefs.cli.enter_options import split_enter
from namespacefs.containers import ContainerTree
from namespacefs.handles import Gone, open_namespace
from namespacefs.kernel import NS_TYPES
from namespacefs.model import Namespace, Snapshot
from namespacefs.ops import enter as ops_enter
from namespacefs.syntax import is_number


def enter(args: argparse.Namespace) -> int:
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
    return _enter_target_of(args, files, _command(args), target_inode)


def _command(args: argparse.Namespace) -> list[str]:
    """The command words; args.target becomes the target's spec."""
    if args.target_pid is not None:
        # nsenter's form: every option precedes -t PID's command, which argparse has split into
        # TARGET and the rest (a `--` before it is consumed)
        cmd = [args.target, *args.cmd] if args.target is not None else list(args.cmd)
        args.target = str(args.target_pid)
        return cmd
    if args.target is None:
        raise UserError("no target; give a container, a pid or a namespace (or -t PID)")
    return split_enter(args)


def _enter_target_of(args: argparse.Namespace, files: dict[str, str], cmd: list[str], target_inode: int | None) -> int:
    chosen = tuple(t for t in NS_TYPES if getattr(args, f"ns_{t}") or t in files)
    if args.net_socket is not None:
        chosen = tuple(dict.fromkeys((*chosen, "net")))
    snap = core.snapshot(chosen_sources(args.sources), db=args.db)
    tree = containers.find(snap, names=_names(args), oci_roots=_roots(args))
    spec = args.target
    if not spec.strip():
        raise UserError("an empty target; give a container, a pid or a namespace")
    target, snap = _enter_target(args, snap, tree, spec)
    try:
        joined = ops_enter.what_to_join(target, tree, chosen, snap)
    except ops_enter.EnterError as e:
        raise UserError(str(e)) from None
    pid, chosen, fds, target_ns, pidfd = joined.pid, joined.types, joined.fds, joined.namespace, joined.pidfd
    netns = _netns_name(target_ns, spec, chosen, args)
    try:
        if pid is not None and target_inode is not None:
            ops_enter.check_pidfd_inode(pidfd, pid, target_inode)
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
        return ops_enter.run(plan, argv, pidfd=pidfd)
    except ops_enter.EnterError as e:
        raise UserError(str(e)) from None
    finally:
        for fd in (*fds.values(), pidfd):
            if fd >= 0:
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

