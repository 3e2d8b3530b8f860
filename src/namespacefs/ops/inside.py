"""Running code inside other namespaces: the one helper, and the one fork rule.

Two ways, chosen by what the kernel allows:

- `in_thread(fd, nstype, func)`: uts, ipc, net and cgroup namespaces are per task, and setns() into
  them works from any thread; a short-lived helper thread joins and runs func, so the caller's
  own namespaces never change and nothing is forked (details: hostnames, interfaces, ...).
- `call(func, join)`: user, mnt, pid and time namespaces can be joined only by a single-threaded
  process (EINVAL/EUSERS otherwise), and a user namespace cannot be left again. A forked child
  joins them (`join()`: one setns() on a pidfd, or each fd, user first and mnt last), runs func
  and sends back its result or the exception it raised (pickled through a pipe); the parent
  returns the one or raises the other. `start()` is the same fork for an action that does not
  return a value (enter's child, which execs, or a child that must stay alive a while).

THE FORK RULE. namespacefs forks from threaded processes too (the daemon, for
/api/accounting?limits=true; the FUSE server for `--allow-other` views). A forked child is a copy
of the one thread that forked: a lock another thread held (logging's, the import lock, a SQLite
connection's, stdio buffers', trio's) stays held in the child for ever. So the code that runs in
a child may only: make system calls (os.*, namespacefs.kernel.*), compute on data already in
memory, and write to its pipe. It must not import a module, log, print, start a thread, touch a
database or an event loop, or return into the caller: it leaves through os._exit()
(forking.fork_and_act). Everything it needs (modules, fds, paths) is prepared before the fork.
Pools of forked workers (ops.chown_shift) are started only by the single-threaded CLI.
"""

from __future__ import annotations

import os
import pickle
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from namespacefs import kernel
from namespacefs.forking import fork_and_act, output_of

T = TypeVar("T")

#: The order namespaces are joined in when they come as separate fds (nsenter's): user first (it may
#: be what grants the right to join the others), mnt last (it changes the paths of what follows).
JOIN_ORDER: tuple[str, ...] = ("user", "cgroup", "ipc", "uts", "net", "pid", "time", "mnt")
#: The types a thread may join on its own (see in_thread).
PER_THREAD: frozenset[str] = frozenset({"uts", "ipc", "net", "cgroup"})


class ChildDied(OSError):
    """The child ended without sending a result (killed, or it failed while reporting)."""


@dataclass(frozen=True)
class Join:
    """What a child joins: the namespaces of types `from_pid` of the process behind pidfd (pid: its
    number, for the /proc path fallback on kernels before 5.8), then each fd of `fds` (type -> fd)."""

    pidfd: int = -1
    from_pid: tuple[str, ...] = ()
    pid: int | None = None
    fds: Mapping[str, int] = field(default_factory=dict)


def join(what: Join) -> None:  # pragma: no cover - runs in the child
    """setns() into everything `what` names (in the child: see the fork rule)."""
    if what.pidfd >= 0 and what.from_pid:
        flags = 0
        for t in what.from_pid:
            flags |= kernel.CLONE_FLAGS[t]
        try:
            kernel.setns(what.pidfd, flags)
        except OSError as e:
            if e.errno not in (22, 38):  # EINVAL: no pidfd setns (before 5.8); ENOSYS
                raise
            _join_paths(what.pid, what.from_pid)
    for t in JOIN_ORDER:
        if t in what.fds:
            kernel.setns(what.fds[t], kernel.CLONE_FLAGS[t])


def _join_paths(pid: int | None, types: tuple[str, ...]) -> None:  # pragma: no cover - old kernels only
    fds = {t: os.open(f"/proc/{pid}/ns/{t}", os.O_RDONLY | os.O_CLOEXEC) for t in types}
    try:
        for t in JOIN_ORDER:
            if t in fds:
                kernel.setns(fds[t], kernel.CLONE_FLAGS[t])
    finally:
        for fd in fds.values():
            os.close(fd)


@dataclass
class Child:
    """A started child: its pid and the read end of the pipe it reports on."""

    pid: int
    r: int

    def finish(self) -> tuple[bytes, int]:
        """Everything the child wrote, and its wait status, once it has exited (reaped here)."""
        return output_of(self.pid, self.r)


def start(act: Callable[[int], int | None]) -> Child:
    """Fork a child that runs act(w), w the write end of its report pipe (close-on-exec, so an
    exec'd command does not hold it); it exits with what act returns (forking.fork_and_act)."""
    r, w = os.pipe2(os.O_CLOEXEC)

    def child() -> int | None:  # pragma: no cover - runs in the child
        os.close(r)
        return act(w)

    try:
        pid = fork_and_act(child)
    except OSError:
        os.close(r)
        raise
    finally:
        os.close(w)
    return Child(pid, r)


def call(func: Callable[[], T], what: Join | None = None) -> T:
    """func() run in a forked child that has joined `what` first: its result, or the exception it
    raised, raised here (ChildDied if it sent neither). func obeys the fork rule above."""
    def act(w: int) -> int:  # pragma: no cover - runs in the child
        try:
            if what is not None:
                join(what)
            reply: tuple[bool, Any] = (True, func())
        except BaseException as e:  # everything goes back to the parent
            reply = (False, e)
        try:
            data = pickle.dumps(reply)
        except Exception as e:  # an unpicklable result or exception: its text still goes back
            data = pickle.dumps((False, RuntimeError(f"{type(e).__name__}: {e}")))
        _write_all(w, data)
        return 0

    out = start(act)
    data, status = out.finish()
    if not data:
        raise ChildDied(f"the helper process died (wait status {status})")
    ok, value = pickle.loads(data)
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def _write_all(fd: int, data: bytes) -> None:  # pragma: no cover - runs in the child
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def in_thread(fd: int, nstype: str, func: Callable[[], T]) -> T:
    """func() run in a helper thread that has joined the namespace behind fd (a PER_THREAD type):
    its result, or the exception it raised, raised here."""
    if nstype not in PER_THREAD:
        raise ValueError(f"a thread cannot join a {nstype} namespace on its own; use call()")
    result: list[Any] = []

    def work() -> None:
        try:
            kernel.setns(fd, kernel.CLONE_FLAGS[nstype])
            result.append((True, func()))
        except BaseException as e:  # handed to the caller's thread
            result.append((False, e))

    t = threading.Thread(target=work, name=f"nsfs-{nstype}")
    t.start()
    t.join()
    ok, value = result[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


__all__ = ["JOIN_ORDER", "PER_THREAD", "Child", "ChildDied", "Join", "call", "in_thread", "join", "start"]
