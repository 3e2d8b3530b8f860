"""Killing a container together with every container nested in it, race-free.

1. Every process of the tree is opened as a pidfd and checked to still be in one of the tree's
   namespace combinations (so a recycled pid is never hit, and nothing outside is ever touched).
2. The tree is frozen: its cgroup freezer (v1 `freezer`, or cgroup2 `cgroup.freeze`) where the
   container has a cgroup of its own that holds nothing but the tree's processes; every process
   the freezer does not hold gets SIGSTOP. /proc is rescanned for members forked meanwhile until
   no new one turns up; a child of a member in namespaces no container had at the snapshot is a
   container nested meanwhile and is taken too.
3. The signal goes to every pidfd; then the tree is thawed (and SIGCONTed).
4. For SIGKILL we wait until every pidfd reports its process gone and say what is left.
"""

from __future__ import annotations

import os
import select
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from namespacefs import kernel, procfs
from namespacefs.containers import Container, ContainerTree, for_children
from namespacefs.containers.candidate import read_cgroups
from namespacefs.discover.processes import read_at
from namespacefs.kernel import NS_TYPES
from namespacefs.syntax import is_number, printable

Combo = tuple[int, ...]
FREEZER_V1 = "/sys/fs/cgroup/freezer"


@dataclass
class KillReport:
    containers: list[str]  # the paths of the containers killed (the target first)
    pids: list[int]  # the processes signalled
    signal: int
    frozen_with: list[str] = field(default_factory=list)  # "freezer:/path", "cgroup2:/path", "SIGSTOP N"
    late: list[int] = field(default_factory=list)  # members found after the first pass (forked meanwhile)
    gone: list[int] = field(default_factory=list)  # exited before we could signal them
    left: list[int] = field(default_factory=list)  # still alive after the timeout
    dry_run: bool = False

    def to_dict(self) -> dict[str, object]:
        return {"containers": self.containers, "pids": self.pids, "signal": signal_name(self.signal),
                "frozen_with": self.frozen_with, "late": self.late, "gone": self.gone, "left": self.left,
                "dry_run": self.dry_run}


class KillError(RuntimeError):
    pass


def signal_name(sig: int) -> str:
    """SIGKILL, or SIGRTMIN+N for the real-time signals Python has no names for."""
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"SIGRTMIN+{sig - signal.SIGRTMIN}"


def parse_signal(text: str) -> int:
    """A signal as kill(1) takes it (KILL, SIGKILL, 9, RTMIN+3, RTMAX-1); ValueError says why not.
    0 is refused: it only tests for existence and would kill nothing."""
    name = text.strip().upper()
    name = name[3:] if name.startswith("SIG") else name
    base, sign, offset = name.partition("+") if "+" in name else name.partition("-")
    if is_number(name):
        number = int(name)
    elif base in ("RTMIN", "RTMAX") and (not sign or is_number(offset)):
        step = int(offset or 0) * (1 if sign == "+" else -1)
        number = (signal.SIGRTMIN if base == "RTMIN" else signal.SIGRTMAX) + step
        if not signal.SIGRTMIN <= number <= signal.SIGRTMAX:
            span = signal.SIGRTMAX - signal.SIGRTMIN
            raise ValueError(f"unknown signal '{text}': real-time signals are RTMIN+0..RTMIN+{span}")
    elif name and f"SIG{name}" in signal.Signals.__members__:
        number = int(signal.Signals[f"SIG{name}"])
    else:
        raise ValueError(f"unknown signal {printable(text)}")
    if number not in signal.valid_signals():
        raise ValueError(f"unknown signal {printable(text)}")
    return number


def subtree(tree: ContainerTree, target: Container) -> list[Container]:
    return list(target.walk())


FREEZERS: tuple[str, ...] = ("freezer", "cgroup2")  # tried in this order
#: Signals that end a process: only these may resume what the user had stopped (state T) or frozen
#: before the kill (SIGTERM to a stopped process would wait for a SIGCONT; SIGKILL needs none).
#: Any other signal (USR1, HUP for a reload, STOP...) leaves every process as stopped or running
#: as it was, and a freezer as frozen or thawed as it was.
ENDING: frozenset[int] = frozenset({signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT})


def kill(tree: ContainerTree, target: Container, sig: int = signal.SIGKILL, dry_run: bool = False,
         timeout: float = 5.0, proc: str = "/proc", freezers: tuple[str, ...] = FREEZERS) -> KillReport:
    """Kill target and every container nested in it (see the module's docstring). freezers: which
    cgroup freezers may be used ('freezer' = v1, 'cgroup2'); () stops every process instead."""
    if target.engine == "host" or target.path == "/":
        raise KillError("refusing to kill the host ('/'); name a container")
    members = subtree(tree, target)
    combos = {_combo(c) for c in members}
    outside = {_combo(c) for c in tree} - combos
    report = KillReport([c.path for c in members], sorted(target.all_pids), sig, dry_run=dry_run)
    if dry_run:
        return report
    run = _Held()
    try:
        _open_members(report.pids, combos, outside, run.fds, report.gone, proc)
        run.was_stopped.update(pid for pid in run.fds if _stopped(pid, proc))
        frozen_pids = _freeze(tree, target, set(report.pids), run.frozen, report, proc, freezers, sig in ENDING)
        for pid, fd in run.fds.items():
            if pid not in frozen_pids and pid not in run.was_stopped and _signal(fd, signal.SIGSTOP):
                run.stopped.append(pid)
        _stop_late(run, combos, outside, report, proc)
        if run.stopped:
            report.frozen_with.append(f"SIGSTOP {len(run.stopped)}")
        report.pids = sorted(run.fds)
        for pid, fd in run.fds.items():
            if not _signal(fd, sig):
                report.gone.append(pid)
    finally:
        _release(run, sig, report, timeout)
    return report


@dataclass
class _Held:
    """What a kill holds while it runs: pidfds of the members, and what it stopped or froze."""

    fds: dict[int, int] = field(default_factory=dict)
    stopped: list[int] = field(default_factory=list)
    frozen: list[str] = field(default_factory=list)
    was_stopped: set[int] = field(default_factory=set)  # stopped by the user before: resumed only by an ENDING signal


def _stop_late(run: _Held, combos: set[Combo], outside: set[Combo], report: KillReport, proc: str) -> None:
    """Stop the members forked before their parents were stopped."""
    for _ in range(20):
        new = _find_new(combos, set(run.fds), set(run.fds) | set(report.gone), proc)
        if not new:
            return
        before = set(run.fds)
        _open_members(new, combos, outside, run.fds, report.gone, proc)
        for pid in set(run.fds) - before:
            report.late.append(pid)
            if _stopped(pid, proc):
                run.was_stopped.add(pid)
            elif _signal(run.fds[pid], signal.SIGSTOP):
                run.stopped.append(pid)


def _release(run: _Held, sig: int, report: KillReport, timeout: float) -> None:
    """Thaw, continue what we stopped (and, for an ending signal, what was stopped before: it could
    not act on the signal while stopped), wait for the ends and close the pidfds."""
    _thaw(run.frozen)
    if sig != signal.SIGSTOP:
        for pid in run.stopped:
            _signal(run.fds[pid], signal.SIGCONT)
    if sig in ENDING:
        for pid in run.was_stopped:
            _signal(run.fds[pid], signal.SIGCONT)
    try:
        report.left = _wait_gone(run.fds, timeout if sig == signal.SIGKILL else min(timeout, 1.0))
    finally:
        for fd in run.fds.values():
            os.close(fd)


def _combo(c: Container) -> Combo:
    return tuple(c.namespaces[t] for t in NS_TYPES)


def _stopped(pid: int, proc: str) -> bool:
    """In state T (stopped by a signal) or t (stopped by a tracer), from /proc/PID/stat."""
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] in (b"T", b"t")
    except (OSError, IndexError):
        return False


def _ppid(pid: int, proc: str) -> int | None:
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            return int(f.read().rpartition(b")")[2].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _combo_of(pid: int, proc: str) -> Combo | None:
    try:
        return tuple(os.stat(f"{proc}/{pid}/ns/{t}").st_ino for t in NS_TYPES)
    except OSError:
        return None


def _for_children(pid: int, combo: Combo, proc: str) -> Combo:
    """The combination its children get (see containers.for_children)."""
    made: list[int | None] = []
    for link in ("pid_for_children", "time_for_children"):
        try:
            made.append(os.stat(f"{proc}/{pid}/ns/{link}").st_ino)
        except OSError:
            made.append(None)
    return for_children(combo, made[0], made[1])


def _open_members(pids: Iterable[int], combos: set[Combo], outside: set[Combo], fds: dict[int, int],
                  gone: list[int], proc: str) -> None:
    """pidfds for the pids that are (still) in the tree; the check runs after the pidfd pins the
    process, and _alive() after the check proves the pid was not reused in between."""
    for pid in pids:
        if pid in fds:
            continue
        try:
            fd = kernel.pidfd_open(pid)
        except OSError:
            gone.append(pid)
            continue
        if _in_tree(pid, combos, outside, fds, proc) and _alive(fd):
            fds[pid] = fd
        else:
            os.close(fd)
            gone.append(pid)  # exited, or the pid now belongs to another process: never touch it


def _in_tree(pid: int, combos: set[Combo], outside: set[Combo], members: dict[int, int], proc: str) -> bool:
    """In one of the tree's combinations, or a member's child in a combination that belonged to no
    container at the snapshot: a container nested since (containers nest by ancestry). Its combination
    joins the tree so that its own children are found as well."""
    combo = _combo_of(pid, proc)
    if combo is None or combo in outside:
        return False
    if combo in combos or _for_children(pid, combo, proc) in combos:  # (the parent half of `unshare --fork`)
        return True
    if _ppid(pid, proc) in members:
        combos.add(combo)
        return True
    return False


def _alive(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return not poller.poll(0)


def _signal(fd: int, sig: int) -> bool:
    try:
        kernel.pidfd_send_signal(fd, sig)
        return True
    except ProcessLookupError:
        return False


def _find_new(combos: set[Combo], members: set[int], known: set[int], proc: str) -> list[int]:
    """Pids in /proc not yet known that are in the tree's combinations (one stat each to sift) or
    are children of members (candidates for a container nested meanwhile; _in_tree decides)."""
    pid_inodes = {c[NS_TYPES.index("pid")] for c in combos}
    found = []
    for entry in os.listdir(proc):
        if not is_number(entry) or int(entry) in known:
            continue
        pid = int(entry)
        try:
            same_pid_ns = os.stat(f"{proc}/{entry}/ns/pid").st_ino in pid_inodes
        except OSError:
            continue
        if (same_pid_ns and _combo_of(pid, proc) in combos) or _ppid(pid, proc) in members:
            found.append(pid)
    return found


# --- cgroup freezers -------------------------------------------------------------------------


def _cgroup2_mount() -> str | None:
    try:
        table = procfs.parse_mountinfo(read_at("/proc/self/mountinfo"))
    except OSError:
        return None
    return next((m.mountpoint for m in table if m.fstype == "cgroup2"), None)


def _procs_below(directory: str) -> set[int] | None:
    pids: set[int] = set()
    try:
        for root, _dirs, files in os.walk(directory):
            if "cgroup.procs" in files:
                with open(os.path.join(root, "cgroup.procs")) as f:
                    pids.update(int(x) for x in f.read().split())
    except OSError:
        return None
    return pids


def _freeze(tree: ContainerTree, target: Container, pids: set[int], frozen: list[str],
            report: KillReport, proc: str, freezers: tuple[str, ...], may_thaw: bool = True) -> set[int]:
    """Freeze the target's own cgroup if it has one holding only tree processes; returns the pids it
    holds. A cgroup frozen already is used as it is and thawed afterwards only if may_thaw."""
    mine = read_cgroups(target.init, proc)
    parent = tree.parent(target)
    theirs = read_cgroups(parent.init, proc) if parent else {}
    choices = []
    for kind in freezers:
        if kind == "freezer":
            choices.append(("freezer", FREEZER_V1, "freezer.state", "FROZEN"))
        elif kind == "cgroup2" and (v2 := _cgroup2_mount()) is not None:
            choices.append(("", v2, "cgroup.freeze", "1"))
    for key, mount, control, value in choices:
        path = mine.get(key)
        if not path or path == "/" or path == theirs.get(key) or not os.path.isdir(mount):
            continue
        directory = mount + path
        held = _procs_below(directory)
        if not held or not held <= pids or not os.path.exists(os.path.join(directory, control)):
            continue  # shared with processes outside the tree: freezing it would touch them
        already = _is_frozen(directory, key)
        if not already:
            try:
                with open(os.path.join(directory, control), "w") as f:
                    f.write(value)
            except OSError:
                continue
        if not already or may_thaw:
            frozen.append(f"{key or 'cgroup2'}:{directory}")
        report.frozen_with.append(f"{'freezer' if key else 'cgroup2'}:{path}")
        _wait_frozen(directory, key)
        return held
    return set()


def _is_frozen(directory: str, key: str) -> bool:
    try:
        if key == "freezer":
            with open(os.path.join(directory, "freezer.state")) as f:
                return f.read().strip() == "FROZEN"
        with open(os.path.join(directory, "cgroup.freeze")) as f:
            return f.read().strip() == "1"
    except OSError:
        return False


def _wait_frozen(directory: str, key: str, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if key == "freezer":
                with open(os.path.join(directory, "freezer.state")) as f:
                    if f.read().strip() == "FROZEN":
                        return
            else:
                with open(os.path.join(directory, "cgroup.events")) as f:
                    if "frozen 1" in f.read():
                        return
        except OSError:
            return
        time.sleep(0.005)


def _thaw(frozen: list[str]) -> None:
    for item in frozen:
        kind, _, directory = item.partition(":")
        control, value = ("freezer.state", "THAWED") if kind == "freezer" else ("cgroup.freeze", "0")
        try:
            with open(os.path.join(directory, control), "w") as f:
                f.write(value)
        except OSError:
            pass


def _wait_gone(fds: dict[int, int], timeout: float) -> list[int]:
    """The pids whose pidfd has not reported an exit within timeout."""
    waiting = dict(fds)
    deadline = time.monotonic() + timeout
    while waiting:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        poller = select.poll()  # poll, not select: a tree may have more than 1024 processes
        for fd in waiting.values():
            poller.register(fd, select.POLLIN)
        done = {fd for fd, _ in poller.poll(remaining * 1000)}
        waiting = {p: fd for p, fd in waiting.items() if fd not in done}
    return sorted(waiting)
