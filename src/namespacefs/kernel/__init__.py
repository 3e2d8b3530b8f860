"""The kernel layer: every ioctl, syscall number and struct layout namespacefs uses, in one place.

Sources (syscall numbers of the supported architectures, uapi headers):
  include/uapi/linux/sched.h      CLONE_NEW* flags
  include/uapi/linux/nsfs.h       NSIO ioctls, struct nsfs_file_handle, struct ns_id_req
  include/uapi/linux/sockios.h    SIOCGSKNS
  include/uapi/linux/mount.h      open_tree, move_mount (MOVE_MOUNT_T_EMPTY_PATH), mount_setattr, struct
                                  mount_attr, fsopen/fsconfig/fsmount, MOUNT_ATTR_*, listmount, statmount,
                                  struct mnt_id_req, struct statmount
  include/uapi/linux/magic.h      filesystem magic numbers (fstatfs f_type)
  include/uapi/linux/fcntl.h      AT_* flags, FD_NSFS_ROOT
  include/uapi/linux/netlink.h    struct nlmsghdr, NLM_F_REQUEST, NLMSG_ERROR
  include/uapi/linux/net_namespace.h, rtnetlink.h   RTM_GETNSID, NETNSA_NSID, NETNSA_FD
  arch/x86/entry/syscalls/syscall_64.tbl, include/uapi/asm-generic/unistd.h

Supported architectures: x86_64 and aarch64 (the generic table). The syscalls numbered 424 and up
(pidfd_*, open_tree, move_mount, fs*, mount_setattr, statmount, listmount, listns) have one number
on every architecture; setns and open_by_handle_at do not, and are taken from SYSCALLS_BY_ARCH.
On another architecture the module imports (so that `nsfs --help` and pure code work), and the
first call of a syscall whose number differs fails with UnsupportedArchitecture, which says so.

The package: this module (types, ioctls, syscall numbers, nsfs, pidfds, file handles, listns),
kernel.mounts (the mount API, listmount/statmount, fstatfs, mount/umount) and kernel.netlink (the
proc connector, RTM_GETNSID), all re-exported here: callers write kernel.X whatever X's module.

Everything here is a thin, typed wrapper that raises OSError with the kernel's errno; policy
(what to do when a process vanished, when access is denied) lives in the callers.

The other half of the kernel layer is compiled: namespacefs._walk (src/namespacefs/_walk.c) makes
discovery's syscalls in a loop (openat, readlinkat, getdents64, read, fstat; NS_GET_NSTYPE,
NS_GET_ID, NS_GET_MNTNS_ID, NS_GET_USERNS, NS_GET_PARENT, NS_GET_OWNER_UID from linux/nsfs.h;
SIOCGSKNS from linux/sockios.h; pidfd_open, pidfd_getfd), each citing its header there, and
returns plain tuples (see namespacefs.discover.processes). namespacefs._tree (src/namespacefs/_tree.c)
makes the per-entry syscalls of `nsfs shift --chown` the same way (openat2, statx, getdents64,
listxattrat/getxattrat/setxattrat, fchownat, fchmodat2; see namespacefs.ops.chown_shift.tree).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct
from typing import TYPE_CHECKING, Any, Final

# --- namespace types -------------------------------------------------------------------------

#: The eight namespace types, in the order lsns lists them, with their CLONE_NEW* flag.
CLONE_FLAGS: Final[dict[str, int]] = {
    "mnt": 0x00020000,
    "uts": 0x04000000,
    "ipc": 0x08000000,
    "user": 0x10000000,
    "pid": 0x20000000,
    "net": 0x40000000,
    "cgroup": 0x02000000,
    "time": 0x00000080,
}
NS_TYPES: Final[tuple[str, ...]] = tuple(CLONE_FLAGS)
TYPE_OF_FLAG: Final[dict[int, str]] = {flag: name for name, flag in CLONE_FLAGS.items()}
#: Types that form a tree through NS_GET_PARENT.
HIERARCHICAL: Final[frozenset[str]] = frozenset({"pid", "user"})
#: The initial namespaces' inodes (uapi/linux/nsfs.h, enum init_ns_ino; ipc..time fixed since Linux
#: 3.8, net and mnt since 6.18), each with its type. They live from boot to shutdown, so such an inode
#: always names the same namespace; every other inode is allocated from 0xF0000000 up and given
#: again once its namespace dies.
INIT_NS_INODES: Final[dict[int, str]] = {
    0xEFFFFFFF: "ipc", 0xEFFFFFFE: "uts", 0xEFFFFFFD: "user", 0xEFFFFFFC: "pid",
    0xEFFFFFFB: "cgroup", 0xEFFFFFFA: "time", 0xEFFFFFF9: "net", 0xEFFFFFF8: "mnt",
}
#: Links in /proc/PID/ns besides the eight: the namespaces a process's children will get.
FOR_CHILDREN_LINKS: Final[dict[str, str]] = {"pid_for_children": "pid", "time_for_children": "time"}

# --- ioctl encoding (include/uapi/asm-generic/ioctl.h) -----------------------------------------


def _io(kind: int, nr: int) -> int:
    return (kind << 8) | nr


def _ior(kind: int, nr: int, size: int) -> int:
    return (2 << 30) | (size << 16) | (kind << 8) | nr


NSIO: Final = 0xB7
NS_GET_USERNS: Final = _io(NSIO, 0x1)
NS_GET_PARENT: Final = _io(NSIO, 0x2)
NS_GET_NSTYPE: Final = _io(NSIO, 0x3)
NS_GET_OWNER_UID: Final = _io(NSIO, 0x4)
NS_GET_MNTNS_ID: Final = _ior(NSIO, 0x5, 8)
NS_GET_ID: Final = _ior(NSIO, 13, 8)  # Linux 6.18: a 64-bit id for every namespace type
SIOCGSKNS: Final = 0x894C  # sockios.h: the net namespace of a socket

# --- syscall numbers ---------------------------------------------------------------------------

#: The numbers that differ between the supported architectures: (setns, open_by_handle_at).
SYSCALLS_BY_ARCH: Final[dict[str, tuple[int, int]]] = {"x86_64": (308, 304), "aarch64": (268, 265)}
ARCH: Final = os.uname().machine
SYS_SETNS, SYS_OPEN_BY_HANDLE_AT = SYSCALLS_BY_ARCH.get(ARCH, (-1, -1))
SYS_PIDFD_SEND_SIGNAL: Final = 424
SYS_OPEN_TREE: Final = 428
SYS_MOVE_MOUNT: Final = 429
SYS_FSOPEN: Final = 430
SYS_FSCONFIG: Final = 431
SYS_FSMOUNT: Final = 432
SYS_PIDFD_GETFD: Final = 438
SYS_MOUNT_SETATTR: Final = 442
SYS_LISTNS: Final = 470  # Linux 6.19
SYS_STATMOUNT: Final = 457  # Linux 6.8
SYS_LISTMOUNT: Final = 458  # Linux 6.8

# fcntl.h / mount.h flags
AT_EMPTY_PATH: Final = 0x1000
AT_RECURSIVE: Final = 0x8000
AT_SYMLINK_NOFOLLOW: Final = 0x100
OPEN_TREE_CLONE: Final = 1
OPEN_TREE_CLOEXEC: Final = os.O_CLOEXEC
MOVE_MOUNT_F_EMPTY_PATH: Final = 0x00000004
MOVE_MOUNT_T_EMPTY_PATH: Final = 0x00000040  # mount.h: the target is to_dfd itself (no path walk, no race)
MOUNT_ATTR_RDONLY: Final = 0x00000001
MOUNT_ATTR_NOSUID: Final = 0x00000002
MOUNT_ATTR_NODEV: Final = 0x00000004
MOUNT_ATTR_NOATIME: Final = 0x00000010
FSOPEN_CLOEXEC: Final = 0x00000001
FSMOUNT_CLOEXEC: Final = 0x00000001
FSCONFIG_SET_FLAG: Final = 0
FSCONFIG_SET_STRING: Final = 1
FSCONFIG_CMD_CREATE: Final = 6
MOUNT_ATTR_IDMAP: Final = 0x00100000
MOUNT_ATTR_SIZE_VER0: Final = 32
FD_NSFS_ROOT: Final = -10003  # fcntl.h, Linux 6.18: the root of nsfs for file handles
FILEID_NSFS: Final = 0xF1  # exportfs.h

_libc: ctypes.CDLL = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def _check(result: int) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


class UnsupportedArchitecture(OSError):
    """A syscall whose number namespacefs does not know on this machine's architecture."""


if TYPE_CHECKING:
    from ctypes import _CArgObject

    SyscallArg = int | bytes | None | ctypes._SimpleCData[Any] | ctypes.Array[Any] | ctypes._Pointer[Any] | _CArgObject


def syscall(number: int, *args: SyscallArg) -> int:
    """Call a raw syscall; return its result or raise OSError(errno)."""
    if number < 0:
        raise UnsupportedArchitecture(errno.ENOSYS, f"namespacefs supports {' and '.join(SYSCALLS_BY_ARCH)}, "
                                      f"not {ARCH}: this syscall's number is not known here")
    return int(_check(_syscall(ctypes.c_long(number), *args)))


# --- nsfs ioctls -------------------------------------------------------------------------------


def ns_type(fd: int) -> str:
    """The type of the namespace behind fd (NS_GET_NSTYPE)."""
    return TYPE_OF_FLAG[fcntl.ioctl(fd, NS_GET_NSTYPE)]


def ns_id(fd: int, nstype: str | None = None) -> int | None:
    """The 64-bit namespace id (NS_GET_ID, Linux 6.18); for a mount namespace on 6.8–6.17, its id
    from NS_GET_MNTNS_ID (the same number); None where the kernel has no id for it."""
    requests = (NS_GET_ID, NS_GET_MNTNS_ID) if nstype == "mnt" else (NS_GET_ID,)
    for request in requests:
        try:
            return ioctl_u64(fd, request)
        except OSError as e:
            if e.errno not in (errno.ENOTTY, errno.EINVAL):
                raise
    return None


def ioctl_u64(fd: int, request: int) -> int:
    """An nsfs ioctl that answers one __u64."""
    buf = bytearray(8)
    fcntl.ioctl(fd, request, buf)
    return int(struct.unpack("=Q", buf)[0])


def ns_owner_fd(fd: int) -> int | None:
    """A new fd for the owning user namespace, or None where the caller may not see it."""
    try:
        return int(fcntl.ioctl(fd, NS_GET_USERNS))
    except PermissionError:
        return None


def ns_parent_fd(fd: int) -> int | None:
    """A new fd for the parent pid/user namespace; None at the top (or the caller's top)."""
    try:
        return int(fcntl.ioctl(fd, NS_GET_PARENT))
    except PermissionError:
        return None


def ns_owner_uid(fd: int) -> int:
    """The uid (in the caller's user namespace) that created a user namespace."""
    buf = bytearray(4)
    fcntl.ioctl(fd, NS_GET_OWNER_UID, buf)
    return int(struct.unpack("=I", buf)[0])


def socket_netns_fd(sock_fd: int) -> int:
    """A new fd for the net namespace a socket lives in (SIOCGSKNS)."""
    return fcntl.ioctl(sock_fd, SIOCGSKNS)


def setns(fd: int, nstype: int = 0) -> None:
    """Move the calling thread into the namespace (or, with a pidfd, the namespaces) behind fd."""
    syscall(SYS_SETNS, ctypes.c_int(fd), ctypes.c_int(nstype))


# --- pidfds ------------------------------------------------------------------------------------


def pidfd_open(pid: int) -> int:
    return os.pidfd_open(pid)


def pidfd_getfd(pidfd: int, target_fd: int) -> int:
    """Duplicate another process's fd into ours (needs ptrace access to it)."""
    # plain ints (non-negative, so the same in any register width): a third faster than ctypes
    # objects, and the socket source makes one call per socket on the host
    return syscall(SYS_PIDFD_GETFD, pidfd, target_fd, 0)


def pidfd_send_signal(pidfd: int, sig: int) -> None:
    """Signal the exact process behind a pidfd: a recycled pid is never hit."""
    syscall(SYS_PIDFD_SEND_SIGNAL, ctypes.c_int(pidfd), ctypes.c_int(sig), None, ctypes.c_uint(0))


# --- nsfs file handles (Linux 6.18) ------------------------------------------------------------


class _NsfsHandle(ctypes.Structure):
    """struct file_handle followed by struct nsfs_file_handle {u64 ns_id; u32 ns_type; u32 ns_inum}."""

    _fields_ = [
        ("handle_bytes", ctypes.c_uint32),
        ("handle_type", ctypes.c_int32),
        ("ns_id", ctypes.c_uint64),
        ("ns_type", ctypes.c_uint32),
        ("ns_inum", ctypes.c_uint32),
    ]


def ns_alive(ident: int | None, nstype: str | None = None, inode: int = 0) -> bool | None:
    """Is the namespace with this 64-bit id still alive? By reopening it from its id: False when the
    kernel says it is gone (ESTALE, ENOENT), True when it opens, None where that cannot be asked
    (no id, not allowed, a kernel without nsfs file handles, or any other answer: ESRCH is not
    taken for "gone", so a caller that drops what is dead never drops a live one on a guess)."""
    if ident is None:
        return None
    try:
        fd = open_ns_by_id(ident, nstype, inode)
    except OSError as e:
        return False if e.errno in (errno.ESTALE, errno.ENOENT) else None
    os.close(fd)
    return True


def open_ns_by_id(ident: int, nstype: str | None = None, inode: int = 0) -> int:
    """Reopen a live namespace from its 64-bit id, without any path to it (needs CAP_SYS_ADMIN)."""
    handle = _NsfsHandle(16, FILEID_NSFS, ident, CLONE_FLAGS[nstype] if nstype else 0, inode)
    return syscall(SYS_OPEN_BY_HANDLE_AT, ctypes.c_int(FD_NSFS_ROOT), ctypes.byref(handle),
                   ctypes.c_int(os.O_RDONLY | os.O_CLOEXEC))


# --- listns (Linux 6.19) -----------------------------------------------------------------------


class _NsIdReq(ctypes.Structure):
    _fields_ = [
        ("size", ctypes.c_uint32),
        ("spare", ctypes.c_uint32),
        ("ns_id", ctypes.c_uint64),
        ("ns_type", ctypes.c_uint32),
        ("spare2", ctypes.c_uint32),
        ("user_ns_id", ctypes.c_uint64),
    ]


#: One listns() batch of ids (a type made once: each `c_uint64 * N` is a new type, a reference cycle).
_IdBatch = ctypes.c_uint64 * 1024


def listns() -> list[int] | None:
    """Every namespace id the kernel lists for us, or None where listns() does not exist."""
    ids: list[int] = []
    batch = _IdBatch()
    last = 0
    while True:
        req = _NsIdReq(ctypes.sizeof(_NsIdReq), 0, last, 0, 0, 0)
        n = _syscall(ctypes.c_long(SYS_LISTNS), ctypes.byref(req), batch, ctypes.c_size_t(1024), ctypes.c_uint(0))
        if n < 0:
            err = ctypes.get_errno()
            if err in (errno.ENOSYS, errno.EINVAL) and not ids:
                return None
            raise OSError(err, os.strerror(err))
        ids.extend(batch[:n])
        if n < 1024:
            return ids
        last = ids[-1]


# --- accounting and id shifting (issue 6) ------------------------------------------------------


#: include/uapi/linux/prctl.h and include/uapi/linux/capability.h (nsenter --keep-caps)
PR_CAP_AMBIENT: Final = 47
PR_CAP_AMBIENT_RAISE: Final = 2
_LINUX_CAPABILITY_VERSION_3: Final = 0x20080522


def keep_permitted_caps() -> None:
    """Make every permitted capability ambient, so it survives execve() (nsenter --keep-caps):
    capset(2) puts them in the inheritable set, prctl(PR_CAP_AMBIENT_RAISE) raises each."""
    header = (ctypes.c_uint32 * 2)(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()  # two struct __user_cap_data_struct {effective, permitted, inheritable}
    _check(_libc.capget(header, data))
    data[2], data[5] = data[1], data[4]  # inheritable = permitted
    _check(_libc.capset(header, data))
    permitted = data[1] | data[4] << 32
    for cap in range(64):
        if permitted >> cap & 1:
            _check(_libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, ctypes.c_ulong(cap), 0, 0))


def unshare(flags: int) -> None:
    """unshare(2) from libc (os.unshare exists only from Python 3.12)."""
    _check(_libc.unshare(ctypes.c_int(flags)))


# --- the rest of the kernel layer, re-exported: kernel.mount(...) as before --------------------

from namespacefs.kernel.mounts import *  # noqa: E402,F403
from namespacefs.kernel.netlink import *  # noqa: E402,F403
