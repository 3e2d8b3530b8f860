"""Entering namespaces, with nsenter's semantics.

All namespaces of a process are joined in one setns() on a pidfd (Linux 5.8+): the kernel orders
the user namespace correctly and either joins them all or none. A namespace without a process (a
pinned one, say) is joined through its own fd. Joining a pid or time namespace only affects
children, so a second fork runs the command; our exit status is the command's (128+N when it died
of signal N). With the mount namespace the command also gets the target's root and working
directory (nsenter -r -w), unless --wd says otherwise.

nsenter's other habits are Plan fields: no second fork (-F), credentials left alone
(--preserve-credentials), the target's environment (-e), capabilities kept (--keep-caps), the
target's SELinux context (-Z), its cgroup (-c), a root of our choosing (-r DIR). A net namespace
entered by name as `ip netns exec NAME` would be (netns_exec) also gets a mount namespace of its
own with a fresh /sys and /etc/netns/NAME/* bound over /etc (iproute2 lib/namespace.c).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from namespacefs import kernel
from namespacefs.forking import fork_and_act
from namespacefs.handles import Gone, open_namespace
from namespacefs.kernel import CLONE_FLAGS, NS_TYPES
from namespacefs.model import Namespace, Snapshot
from namespacefs.ops import inside
from namespacefs.ops.target_info import (
    EnterError,
    check_pidfs_inode,
    default_shell,
    open_namespace_file,
    open_ns_link,
    process_exists,
    selinux_context,
    socket_netns,
    target_cgroup,
    target_environment,
    target_ids,
    user_parent,
)
from namespacefs.targets import Target

if TYPE_CHECKING:
    from namespacefs.containers import ContainerTree

#: The order nsenter joins namespaces in when they come as separate fds (ops.inside's).
JOIN_ORDER = inside.JOIN_ORDER


@dataclass
class Plan:
    """What to join. pid: a process to take namespaces (and root, cwd) from; fds: type -> fd of a
    namespace to join on its own (used when there is no process, or for a single namespace)."""

    types: tuple[str, ...]
    pid: int | None = None
    fds: dict[str, int] = field(default_factory=dict)
    uid: int | None = None
    gid: int | None = None
    wd: str | None = None
    follow_root: bool = True
    follow_wd: bool = False  # -w: the target's working directory even without its mount namespace
    root: str | None = None  # -r DIR: this root directory (opened before joining), not the target's
    fork: bool = True  # False: -F, no second fork for a pid or time namespace
    preserve_credentials: bool = False  # do not become root of an entered user namespace
    env: dict[bytes, bytes] | None = None  # -e: the target's environment
    keep_caps: bool = False
    selinux_context: bytes | None = None  # -Z: the exec context to set
    cgroup: str | None = None  # -c: the cgroup.procs file to join
    netns_exec: str | None = None  # the name: behave like `ip netns exec NAME`


def needed_types(pid: int, types: Sequence[str], proc: str = "/proc") -> tuple[str, ...]:
    """The types whose namespace differs from ours (joining one's own user namespace is EINVAL)."""
    wanted = []
    for t in types:
        try:
            if os.stat(f"{proc}/{pid}/ns/{t}").st_ino != os.stat(f"{proc}/self/ns/{t}").st_ino:
                wanted.append(t)
        except FileNotFoundError:
            raise EnterError(f"process {pid} has gone") from None
        except OSError as e:
            raise EnterError(f"cannot read the {t} namespace of process {pid}: {e.strerror}") from None
    return tuple(wanted)


@dataclass
class Joined:
    """What entering a resolved target joins: a process's namespaces (pid; `types` as chosen), or,
    for a namespace no process is in, its own fd (fds). namespace: the target, if one."""

    pid: int | None
    types: tuple[str, ...]
    fds: dict[str, int]
    namespace: Namespace | None = None
    pidfd: int = -1  # of pid, checked against the snapshot (verified_pidfd); the caller closes it


def what_to_join(target: Target, tree: ContainerTree, types: tuple[str, ...], snapshot: Snapshot) -> Joined:
    """The policy of `nsfs enter TARGET`: a process is entered as it is; a container through its
    init (a pod: the namespaces its members share); a namespace through one of its processes, or
    its own fd when none is in it (then only it can be entered). types: the -m/-u/... chosen. The
    process comes with its pidfd, checked against the snapshot: run() joins through that one."""
    joined = _what_to_join(target, tree, types, snapshot)
    if joined.pid is not None:
        joined.pidfd = verified_pidfd(snapshot, joined.pid)
    return joined


def verified_pidfd(snapshot: Snapshot, pid: int) -> int:
    """A pidfd of pid, checked to still be the process of the snapshot (same namespaces); the caller
    keeps it and acts through it (run() joins through this very pidfd), so a pid recycled since the
    check is never acted on."""
    try:
        fd = kernel.pidfd_open(pid)
    except OSError:
        raise EnterError(f"process {pid} has gone") from None
    try:
        seen = snapshot.processes[pid].namespaces if pid in snapshot.processes else {}
        for t in NS_TYPES:
            if t in seen and os.stat(f"/proc/{pid}/ns/{t}").st_ino != seen[t]:
                raise EnterError(f"process {pid} is not the one the scan saw (its {t} namespace changed)")
        kernel.pidfd_send_signal(fd, 0)  # still alive after the checks: they were of this process
    except OSError:
        os.close(fd)
        raise EnterError(f"process {pid} has gone") from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_pidfd_inode(pidfd: int, pid: int, inode: int) -> None:
    """-t PID:INODE (nsenter 2.42): the pidfd entered through must be of the process with this
    pidfs inode."""
    if os.fstat(pidfd).st_ino != inode:
        raise EnterError(f"process {pid} is not the process {pid}:{inode} (its pidfd inode is another)")


def _what_to_join(target: Target, tree: ContainerTree, types: tuple[str, ...], snapshot: Snapshot) -> Joined:
    if target.pid is not None:
        return Joined(target.pid, types, {})
    if target.container is not None:
        c = target.container
        if c.group:  # a pod: what its members share, through one of them
            types = types or tuple(t for t in NS_TYPES if t in c.own_namespaces(tree.root))
        return Joined(c.init, types, {})
    ns = target.namespace
    assert ns is not None
    types = types or (ns.type,)
    if ns.processes:
        return Joined(ns.processes[0], types, {}, ns)
    if types != (ns.type,):
        raise EnterError(f"{target.spec} has no process; only its own {ns.type} namespace can be entered")
    try:
        return Joined(None, types, {ns.type: open_namespace(ns, snapshot)}, ns)
    except Gone as e:
        raise EnterError(str(e)) from None


def run(plan: Plan, argv: Sequence[str], proc: str = "/proc", pidfd: int = -1) -> int:
    """Run argv inside the planned namespaces; return its exit status. pidfd: a pidfd of plan.pid
    that the caller already checked (targets.resolve_target's), used as it is so that the process
    joined is the one resolved; without one, a pidfd is opened here."""
    if not argv or not argv[0]:
        raise EnterError("no command to run" if not argv else "an empty command name")
    own_pidfd = rootfd = cwdfd = -1
    try:
        if plan.pid is not None and pidfd < 0:
            own_pidfd = pidfd = _open_pidfd(plan.pid)
        rootfd, cwdfd = _open_dirs(plan, proc)
        if pidfd >= 0 and plan.pid is not None:
            _still_alive(pidfd, plan.pid)  # so the root and cwd opened by pid were this process's
        join = inside.Join(pidfd, tuple(t for t in plan.types if t not in plan.fds), plan.pid, plan.fds)
        message, status = inside.start(lambda w: _child(plan, list(argv), join, rootfd, cwdfd, w)).finish()
    except OSError as e:
        raise EnterError(f"fork: {e.strerror}") from None
    finally:
        for fd in (own_pidfd, rootfd, cwdfd):
            if fd >= 0:
                os.close(fd)
    if message:
        raise EnterError(message.decode(errors="replace"))
    return _exit_status(status)


def _still_alive(pidfd: int, pid: int) -> None:
    try:
        kernel.pidfd_send_signal(pidfd, 0)
    except OSError:
        raise EnterError(f"process {pid} has gone") from None


def _open_pidfd(pid: int) -> int:
    try:
        return kernel.pidfd_open(pid)
    except ProcessLookupError:
        raise EnterError(f"process {pid} has gone") from None
    except OSError as e:
        raise EnterError(f"cannot open process {pid}: {e.strerror}") from None


def _open_dirs(plan: Plan, proc: str) -> tuple[int, int]:
    """(root fd, cwd fd) the command gets (-1: none): the target's root with its mount namespace
    (or -r DIR), its working directory with its root or -w. Opened here, before the fork."""
    rootfd = cwdfd = -1
    try:
        if plan.pid is not None:
            with_its_root = "mnt" in plan.types and plan.follow_root and plan.root is None
            try:
                if with_its_root:
                    rootfd = os.open(f"{proc}/{plan.pid}/root", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                if plan.wd is None and (with_its_root or plan.follow_wd):
                    cwdfd = os.open(f"{proc}/{plan.pid}/cwd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except ProcessLookupError:
                raise EnterError(f"process {plan.pid} has gone") from None
            except OSError as e:
                raise EnterError(f"cannot open process {plan.pid}: {e.strerror}") from None
        if plan.root is not None:
            try:
                rootfd = os.open(plan.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError as e:
                raise EnterError(f"{plan.root}: {e.strerror}") from None
    except EnterError:
        for fd in (rootfd, cwdfd):
            if fd >= 0:
                os.close(fd)
        raise
    return rootfd, cwdfd


def _exit_status(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def _fail(w: int, message: str, code: int = 126) -> None:  # pragma: no cover - child only
    try:
        os.write(w, message.encode())
    finally:
        os._exit(code)


def _child(plan: Plan, argv: list[str], join: inside.Join, rootfd: int, cwdfd: int,
           w: int) -> None:  # pragma: no cover - child only (ops.inside.start: never returns into the caller)
    """Join, set up what nsenter would, then exec (or fork once more for a pid or time namespace)."""
    try:
        try:
            inside.join(join)
        except OSError as e:
            raise OSError(e.errno, e.strerror, e.filename or "setns") from None
        _set_up(plan, rootfd, cwdfd)
    except OSError as e:
        _fail(w, f"{e.filename}: {e.strerror}")
    except BaseException as e:  # the child must never return into the caller
        _fail(w, str(e))
    if plan.fork and ("pid" in plan.types or "time" in plan.types):
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the command's to handle; we only wait
        signal.signal(signal.SIGQUIT, signal.SIG_IGN)
        try:
            grandchild = fork_and_act(lambda: _exec(argv, w, plan.env, reset_signals=True))
        except OSError as e:
            _fail(w, f"fork: {e.strerror}")
        os.close(w)
        os._exit(_exit_status(os.waitpid(grandchild, 0)[1]))
    _exec(argv, w, plan.env)


def _set_up(plan: Plan, rootfd: int, cwdfd: int) -> None:  # pragma: no cover - child only
    """What follows the joining, in nsenter's order; an OSError names its step (as its filename)."""
    steps: list[tuple[str, Callable[[], object]]] = []
    if plan.netns_exec is not None:
        steps.append(("ip netns exec's mounts", lambda: _like_ip_netns_exec(plan.netns_exec or "")))
    steps.append(("the target's root directory", lambda: _chroot(rootfd)))
    steps.append(("the working directory", lambda: _chdir(plan, rootfd, cwdfd)))
    if plan.cgroup is not None:
        steps.append((f"joining the cgroup ({plan.cgroup})", lambda: _join_cgroup(plan.cgroup or "")))
    if plan.keep_caps and "user" in plan.types:
        steps.append(("keeping the capabilities (--keep-caps)", kernel.keep_permitted_caps))
    steps.append(("switching to the -S/-G ids (are they mapped in its user namespace?)", lambda: _credentials(plan)))
    if plan.selinux_context is not None:
        steps.append(("setting the SELinux exec context (-Z)", lambda: _write_exec_context(plan.selinux_context or b"")))
    for stage, step in steps:
        try:
            step()
        except OSError as e:
            raise OSError(e.errno, e.strerror, e.filename or stage) from None


def _chroot(rootfd: int) -> None:  # pragma: no cover - child only
    if rootfd >= 0:
        os.fchdir(rootfd)
        os.chroot(".")


def _chdir(plan: Plan, rootfd: int, cwdfd: int) -> None:  # pragma: no cover - child only
    if cwdfd >= 0:
        os.fchdir(cwdfd)
    elif plan.wd is not None:
        os.chdir(plan.wd)
    elif rootfd >= 0:
        os.chdir("/")


def _join_cgroup(procs: str) -> None:  # pragma: no cover - child only
    with open(procs, "w") as f:
        f.write("0")  # 0: the writing process


def _write_exec_context(context: bytes) -> None:  # pragma: no cover - child only
    with open("/proc/thread-self/attr/exec", "wb") as f:
        f.write(context)


def _exec(argv: list[str], w: int, env: dict[bytes, bytes] | None,
          reset_signals: bool = False) -> None:  # pragma: no cover - child only
    if reset_signals:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGQUIT, signal.SIG_DFL)
    try:
        if env is not None:
            os.execvpe(argv[0], argv, env)
        os.execvp(argv[0], argv)
    except (OSError, ValueError) as e:  # ValueError: an argument with a NUL byte, an empty name
        _fail(w, f"{argv[0]}: {getattr(e, 'strerror', None) or e}", 127 if isinstance(e, FileNotFoundError) else 126)


def _like_ip_netns_exec(name: str) -> None:  # pragma: no cover - child only
    """What `ip netns exec NAME` does once in the net namespace (iproute2 lib/namespace.c
    netns_switch): a mount namespace of our own whose mounts do not propagate back, /sys mounted
    afresh (so /sys/class/net shows this namespace's interfaces), and each /etc/netns/NAME/FILE
    bound over /etc/FILE (resolv.conf, hosts, ...)."""
    kernel.unshare(CLONE_FLAGS["mnt"])
    kernel.mount("", "/", None, kernel.MS_SLAVE | kernel.MS_REC)
    readonly = os.statvfs("/sys").f_flag & os.ST_RDONLY
    kernel.umount("/sys", kernel.MNT_DETACH)
    kernel.mount(name, "/sys", "sysfs", kernel.MS_RDONLY if readonly else 0)
    etc = f"/etc/netns/{name}"
    if os.path.isdir(etc):
        for entry in sorted(os.listdir(etc)):
            try:
                kernel.mount(f"{etc}/{entry}", f"/etc/{entry}", None, kernel.MS_BIND)
            except OSError as e:  # as ip does: say so and go on
                os.write(2, f"nsfs enter: bind {etc}/{entry} -> /etc/{entry} failed: {e.strerror}\n".encode())


def _credentials(plan: Plan) -> None:  # pragma: no cover - child only
    uid, gid = plan.uid, plan.gid
    # nsenter: in a user namespace become its root unless told otherwise
    if "user" in plan.types and not plan.preserve_credentials:
        uid = 0 if uid is None else uid
        gid = 0 if gid is None else gid
    if gid is not None:
        try:
            os.setgroups([])
        except PermissionError:
            if "user" not in plan.types:  # a user namespace with setgroups denied: nsenter goes on
                raise
        os.setgid(gid)
    if uid is not None:
        os.setuid(uid)


__all__ = [
    "NS_TYPES",
    "EnterError",
    "Joined",
    "Plan",
    "check_pidfs_inode",
    "default_shell",
    "needed_types",
    "open_namespace_file",
    "open_ns_link",
    "process_exists",
    "run",
    "selinux_context",
    "socket_netns",
    "target_cgroup",
    "target_environment",
    "target_ids",
    "user_parent",
    "what_to_join",
]
