"""Syscall tracepoints for the live service: the one place for perf_event_open(2), its ring
buffer and tracefs.

unshare() and setns() make no proc-connector event, yet they change what a process is in. The
kernel's syscall tracepoints (`syscalls:sys_exit_unshare`, `sys_exit_setns`, and where asked
`sys_exit_clone`, `sys_exit_clone3`; CONFIG_FTRACE_SYSCALLS) report every successful call
system-wide: one perf event
per tracepoint and CPU (pid -1), all of one CPU writing into one ring buffer (mmap), a filter in
the kernel (`ret == 0`, `ret > 0` for clone) so only calls that changed something are copied out.
Each record carries the caller's pid and tid (PERF_SAMPLE_TID) and the raw tracepoint data, whose
first field (`common_type`) says which tracepoint it was. The records are parsed in C
(namespacefs._events.perf_records).

Tracepoint ids are read from tracefs (`events/syscalls/NAME/id`). When tracefs is not mounted
anywhere, it is mounted at /sys/kernel/tracing for as long as a Tracer is open and unmounted when
it closes (only what we mounted).

Sources:
  include/uapi/linux/perf_event.h   struct perf_event_attr, PERF_TYPE_TRACEPOINT, PERF_SAMPLE_*,
                                    PERF_FLAG_FD_CLOEXEC, PERF_EVENT_IOC_*, struct
                                    perf_event_mmap_page (data_head/data_tail/data_offset/data_size),
                                    (the records themselves: _events.c)
  arch/x86/entry/syscalls/syscall_64.tbl, include/uapi/asm-generic/unistd.h   perf_event_open
  Documentation/trace/events.rst    the filter syntax of PERF_EVENT_IOC_SET_FILTER
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import mmap
import os
import struct
import time
from typing import Final, NamedTuple

from namespacefs import _events, kernel, procfs

#: perf_event_open(2): 298 on x86_64 (syscall_64.tbl), 241 on aarch64 (asm-generic/unistd.h);
#: elsewhere kernel.syscall says the architecture is not supported.
SYS_PERF_EVENT_OPEN: Final = {"x86_64": 298, "aarch64": 241}.get(kernel.ARCH, -1)
PERF_TYPE_TRACEPOINT: Final = 2
PERF_SAMPLE_TID: Final = 1 << 1
PERF_SAMPLE_RAW: Final = 1 << 10
PERF_FLAG_FD_CLOEXEC: Final = 1 << 3
PERF_ATTR_SIZE_VER7: Final = 128
ATTR_DISABLED: Final = 1 << 0  # the first bit of the flags word
#: ioctls on a perf event fd ('$' = 0x24)
PERF_EVENT_IOC_ENABLE: Final = (0x24 << 8) | 0
PERF_EVENT_IOC_SET_OUTPUT: Final = (0x24 << 8) | 5
PERF_EVENT_IOC_SET_FILTER: Final = (1 << 30) | (8 << 16) | (0x24 << 8) | 6  # _IOW('$', 6, char *)
#: struct perf_event_mmap_page: where the ring buffer's counters are
MMAP_DATA_HEAD: Final = 1024
MMAP_DATA_TAIL: Final = 1032
MMAP_DATA_OFFSET: Final = 1040
MMAP_DATA_SIZE: Final = 1048
U64: Final = struct.Struct("=Q")

TRACEFS: Final = "/sys/kernel/tracing"
#: The tracepoints read, with the filter that keeps the calls that made or joined a namespace.
TRACEPOINTS: Final[dict[str, str]] = {
    "sys_exit_unshare": "ret == 0", "sys_exit_setns": "ret == 0",
    "sys_exit_clone": "ret > 0", "sys_exit_clone3": "ret > 0",
}
PAGES: Final = 32  # data pages per CPU (128 KiB: ~2,800 records before the kernel drops any; the
# daemon's updater reads them between its updates, so a long one, a full scan's, must fit)


class _Attr(ctypes.Structure):
    """struct perf_event_attr, up to PERF_ATTR_SIZE_VER7 (the rest stays zero)."""

    _fields_ = [("type", ctypes.c_uint32), ("size", ctypes.c_uint32), ("config", ctypes.c_uint64),
                ("sample_period", ctypes.c_uint64), ("sample_type", ctypes.c_uint64),
                ("read_format", ctypes.c_uint64), ("flags", ctypes.c_uint64), ("wakeup_events", ctypes.c_uint32),
                ("bp_type", ctypes.c_uint32), ("rest", ctypes.c_uint8 * (PERF_ATTR_SIZE_VER7 - 56))]


class Call(NamedTuple):
    """One traced syscall that returned successfully."""

    syscall: str  # "unshare", "setns", "clone", "clone3"
    pid: int  # the caller's process (tgid)
    tid: int
    ret: int = 0  # what it returned: for a clone, the new task's id (in the caller's pid namespace)


class Unavailable(OSError):
    """A mechanism the tracer needs is missing (message says which)."""


def tracefs_dir() -> str | None:
    """Where tracefs is mounted in our mount namespace, if anywhere."""
    with open("/proc/self/mountinfo", "rb") as f:
        mounts = procfs.parse_mountinfo(f.read())
    return next((m.mountpoint for m in mounts if m.fstype == "tracefs"), None)


def tracepoint_id(root: str, name: str) -> int:
    with open(f"{root}/events/syscalls/{name}/id") as f:
        return int(f.read())


def perf_event_open(attr: _Attr, cpu: int, pid: int = -1, group_fd: int = -1) -> int:
    return kernel.syscall(SYS_PERF_EVENT_OPEN, ctypes.pointer(attr), ctypes.c_int(pid), ctypes.c_int(cpu),
                          ctypes.c_int(group_fd), ctypes.c_ulong(PERF_FLAG_FD_CLOEXEC))


def online_cpus() -> list[int]:
    """The CPUs the kernel has online (/sys/devices/system/cpu/online: `0-3,6`)."""
    try:
        with open("/sys/devices/system/cpu/online") as f:
            text = f.read().strip()
    except OSError:
        return list(range(os.cpu_count() or 1))
    cpus: list[int] = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        cpus.extend(range(int(first), int(last or first) + 1))
    return cpus


class _Ring:
    """One CPU's ring buffer (the first event's mmap; the others write into it)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        page = mmap.PAGESIZE
        self.map = mmap.mmap(fd, (1 + PAGES) * page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.offset = U64.unpack_from(self.map, MMAP_DATA_OFFSET)[0] or page
        self.size = U64.unpack_from(self.map, MMAP_DATA_SIZE)[0] or PAGES * page

    def pending(self) -> bool:
        return bool(U64.unpack_from(self.map, MMAP_DATA_HEAD)[0] != U64.unpack_from(self.map, MMAP_DATA_TAIL)[0])

    def close(self) -> None:
        self.map.close()


class Tracer:
    """The syscall tracepoints on every CPU (unshare, setns; with `clones`, clone and clone3 too).
    Each ring's fd is readable once something was recorded in it (what the daemon's Listener waits
    on); calls() returns what was called; `lost` counts records the kernel dropped (a full ring
    buffer: an overrun)."""

    def __init__(self, clones: bool = True) -> None:
        self.mounted: str | None = None  # the tracefs we mounted (and unmount on close)
        self.fds: list[int] = []
        self.rings: list[_Ring] = []
        self.names: dict[int, str] = {}  # tracepoint id -> syscall name
        self.lost = 0
        self.read_at = time.time()
        try:
            root = self._tracefs()
            ids = {tracepoint_id(root, name): name for name in TRACEPOINTS if clones or "clone" not in name}
            for cpu in online_cpus():
                self._open_cpu(cpu, ids)
        except OSError:
            self.close()
            raise
        self.names = {i: name.removeprefix("sys_exit_") for i, name in ids.items()}

    def _tracefs(self) -> str:
        root = tracefs_dir()
        if root is not None:
            return root
        try:
            kernel.mount("nodev", TRACEFS, "tracefs")
        except OSError as e:
            raise Unavailable(e.errno, f"tracefs is not mounted and cannot be ({e.strerror})") from None
        self.mounted = TRACEFS
        return TRACEFS

    def _open_cpu(self, cpu: int, ids: dict[int, str]) -> None:
        leader = -1
        for ident, name in ids.items():
            attr = _Attr(type=PERF_TYPE_TRACEPOINT, size=PERF_ATTR_SIZE_VER7, config=ident, sample_period=1,
                         sample_type=PERF_SAMPLE_TID | PERF_SAMPLE_RAW, flags=ATTR_DISABLED, wakeup_events=1)
            fd = perf_event_open(attr, cpu)
            self.fds.append(fd)
            with contextlib.suppress(OSError):  # without a filter every call is copied; ret is checked below
                fcntl.ioctl(fd, PERF_EVENT_IOC_SET_FILTER, TRACEPOINTS[name].encode() + b"\0")
            if leader < 0:
                leader = fd
                self.rings.append(_Ring(fd))
            else:
                fcntl.ioctl(fd, PERF_EVENT_IOC_SET_OUTPUT, leader)
            fcntl.ioctl(fd, PERF_EVENT_IOC_ENABLE, 0)

    def pending(self) -> bool:
        """A record is in a ring that calls() has not read (what another thread may ask while this
        one waits: it reads the rings' heads and tails only, and consumes nothing)."""
        return any(ring.pending() for ring in self.rings)

    def calls(self) -> list[Call]:
        """The successful calls recorded since the last time (without waiting): each ring's
        records parsed in C (namespacefs._events), their space freed."""
        self.read_at = time.time()  # every call before this is in the rings read now
        calls: list[Call] = []
        names = self.names
        for ring in self.rings:
            samples, lost = _events.perf_records(ring.map, ring.offset, ring.size)
            self.lost += lost
            for pid, tid, ident, ret in samples:
                name = names.get(ident)
                if name is not None and ret >= 0 and not (ret == 0 and name.startswith("clone")):
                    calls.append(Call(name, pid, tid, ret))  # (else failed, no filter in the kernel;
        return calls  # or the child's side of a clone)

    def close(self) -> None:
        for ring in self.rings:
            ring.close()
        for fd in self.fds:
            os.close(fd)
        self.rings, self.fds = [], []
        if self.mounted is not None:
            with contextlib.suppress(OSError):
                kernel.umount(self.mounted, kernel.MNT_DETACH)
            self.mounted = None


def open_tracer(clones: bool = True) -> tuple[Tracer | None, str | None]:
    """A Tracer (of clone() and clone3() too, with `clones`), or None and why not (not root, no
    tracefs, a kernel without syscall tracepoints)."""
    if os.geteuid() != 0:
        return None, "syscall tracepoints need root"
    try:
        return Tracer(clones), None
    except OSError as e:
        reason = e.strerror or str(e)
        if isinstance(e, FileNotFoundError):
            reason = "no syscall tracepoints in tracefs (CONFIG_FTRACE_SYSCALLS)"
        elif e.errno in (errno.EACCES, errno.EPERM):
            reason = f"perf_event_open refused ({e.strerror}; kernel.perf_event_paranoid?)"
        return None, f"syscall tracepoints unavailable: {reason}"
