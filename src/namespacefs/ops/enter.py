"""Entering namespaces, with nsenter's semantics.

All namespaces of a process are joined in one setns() on a pidfd (Linux 5.8+): the kernel orders
the user namespace correctly and either joins them all or none. A namespace without a process (a
pinned one, say) is joined through its own fd. Joining a pid or time namespace only affects
children, so a second fork runs the command; our exit status is the command's (128+N when it died
of signal N). With the mount namespace the command also gets the target's root and working
directory (nsenter -r -w), unless --wd says otherwise.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field

from namespacefs import kernel
from namespacefs.forking import fork_and_act
from namespacefs.kernel import CLONE_FLAGS, NS_TYPES

#: The order nsenter joins namespaces in when they come as separate fds: user first (it may be what
#: grants the right to join the others), mnt last (it changes the paths of what follows).
JOIN_ORDER: tuple[str, ...] = ("user", "cgroup", "ipc", "uts", "net", "pid", "time", "mnt")


class EnterError(RuntimeError):
    """The namespaces could not be joined or the command could not be started; str() says why."""


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


def default_shell(pid: int | None, proc: str = "/proc", in_its_root: bool = True) -> list[str]:
    """The target's $SHELL where the command will find it, else /bin/sh. in_its_root: the command
    runs under the target's root (its mount namespace is entered); else under ours."""
    if pid is not None:
        try:
            with open(f"{proc}/{pid}/environ", "rb") as f:
                env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
            shell = env.get(b"SHELL", b"").decode(errors="replace")
            root = f"{proc}/{pid}/root" if in_its_root else ""
            if shell.startswith("/") and os.path.exists(root + shell):
                return [shell]
        except OSError:
            pass
    return ["/bin/sh"]


def run(plan: Plan, argv: Sequence[str], proc: str = "/proc") -> int:
    """Run argv inside the planned namespaces; return its exit status."""
    if not argv or not argv[0]:
        raise EnterError("no command to run" if not argv else "an empty command name")
    pidfd = rootfd = cwdfd = -1
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        if plan.pid is not None:
            try:
                pidfd = kernel.pidfd_open(plan.pid)
                if "mnt" in plan.types and plan.follow_root:
                    rootfd = os.open(f"{proc}/{plan.pid}/root", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                    if plan.wd is None:
                        cwdfd = os.open(f"{proc}/{plan.pid}/cwd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except ProcessLookupError:
                raise EnterError(f"process {plan.pid} has gone") from None
            except OSError as e:
                raise EnterError(f"cannot open process {plan.pid}: {e.strerror}") from None
        child = fork_and_act(lambda: _child(plan, list(argv), pidfd, rootfd, cwdfd, w, r))
        os.close(w)
        w = -1
        message = _read_all(r)
        _, status = _wait(child)
    finally:
        for fd in (r, w, pidfd, rootfd, cwdfd):
            if fd >= 0:
                os.close(fd)
    if message:
        raise EnterError(message.decode(errors="replace"))
    return _exit_status(status)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    return b"".join(chunks)


def _wait(pid: int) -> tuple[int, int]:
    while True:
        try:
            return os.waitpid(pid, 0)
        except InterruptedError:
            continue


def _exit_status(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def _fail(w: int, message: str, code: int = 126) -> None:  # pragma: no cover - child only
    try:
        os.write(w, message.encode())
    finally:
        os._exit(code)


def _child(plan: Plan, argv: list[str], pidfd: int, rootfd: int, cwdfd: int, w: int, r: int) -> None:  # pragma: no cover
    """In the forked child (fork_and_act: it never returns into the caller): join, then exec."""
    os.close(r)
    stage = "setns"
    try:
        _join(plan, pidfd)
        stage = "the target's root directory"
        if rootfd >= 0:
            os.fchdir(rootfd)
            os.chroot(".")
        stage = "the working directory"
        if cwdfd >= 0:
            os.fchdir(cwdfd)
        elif plan.wd is not None:
            os.chdir(plan.wd)
        elif rootfd >= 0:
            os.chdir("/")
        stage = "switching to the -S/-G ids (are they mapped in its user namespace?)"
        _credentials(plan)
    except OSError as e:
        _fail(w, f"{e.filename or stage}: {e.strerror}")
    except BaseException as e:  # the child must never return into the caller
        _fail(w, str(e))
    if "pid" in plan.types or "time" in plan.types:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the command's to handle; we only wait
        signal.signal(signal.SIGQUIT, signal.SIG_IGN)
        try:
            grandchild = fork_and_act(lambda: _exec(argv, w, reset_signals=True))
        except OSError as e:
            _fail(w, f"fork: {e.strerror}")
        os.close(w)
        _, status = _wait(grandchild)
        os._exit(_exit_status(status))
    _exec(argv, w)


def _exec(argv: list[str], w: int, reset_signals: bool = False) -> None:  # pragma: no cover - child only
    if reset_signals:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGQUIT, signal.SIG_DFL)
    try:
        os.execvp(argv[0], argv)
    except (OSError, ValueError) as e:  # ValueError: an argument with a NUL byte, an empty name
        _fail(w, f"{argv[0]}: {getattr(e, 'strerror', None) or e}", 127 if isinstance(e, FileNotFoundError) else 126)


def _join(plan: Plan, pidfd: int) -> None:  # pragma: no cover - child only
    from_pid = [t for t in plan.types if t not in plan.fds]
    if pidfd >= 0 and from_pid:
        flags = 0
        for t in from_pid:
            flags |= CLONE_FLAGS[t]
        try:
            kernel.setns(pidfd, flags)
        except OSError as e:
            if e.errno not in (22, 38):  # EINVAL: no pidfd setns (before 5.8); ENOSYS
                raise
            _join_paths(plan.pid, from_pid)
    for t in JOIN_ORDER:
        if t in plan.fds:
            kernel.setns(plan.fds[t], CLONE_FLAGS[t])


def _join_paths(pid: int | None, types: list[str]) -> None:  # pragma: no cover - old kernels only
    fds = {t: os.open(f"/proc/{pid}/ns/{t}", os.O_RDONLY | os.O_CLOEXEC) for t in types}
    for t in JOIN_ORDER:
        if t in fds:
            kernel.setns(fds[t], CLONE_FLAGS[t])


def _credentials(plan: Plan) -> None:  # pragma: no cover - child only
    uid, gid = plan.uid, plan.gid
    if "user" in plan.types:  # nsenter: in a user namespace become its root unless told otherwise
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


__all__ = ["NS_TYPES", "EnterError", "Plan", "default_shell", "needed_types", "run"]
