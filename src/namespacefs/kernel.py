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

Everything here is a thin, typed wrapper that raises OSError with the kernel's errno; policy
(what to do when a process vanished, when access is denied) lives in the callers.

The other half of the kernel layer is compiled: namespacefs._walk (src/namespacefs/_walk.c) makes
discovery's syscalls in a loop (openat, readlinkat, getdents64, read, fstat; NS_GET_NSTYPE,
NS_GET_ID, NS_GET_MNTNS_ID, NS_GET_USERNS, NS_GET_PARENT, NS_GET_OWNER_UID from linux/nsfs.h;
SIOCGSKNS from linux/sockios.h; pidfd_open, pidfd_getfd), each citing its header there, and
returns plain tuples (see namespacefs.discover.processes).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct
from typing import TYPE_CHECKING, Any, Final, NamedTuple

if TYPE_CHECKING:
    import socket

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

_libc = ctypes.CDLL(None, use_errno=True)
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
    kernel says it is gone (ESTALE, ENOENT, ESRCH), True when it opens, None where that cannot be
    asked (no id, not allowed, a kernel without nsfs file handles)."""
    if ident is None:
        return None
    try:
        fd = open_ns_by_id(ident, nstype, inode)
    except OSError as e:
        return False if e.errno in (errno.ESTALE, errno.ENOENT, errno.ESRCH) else None
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


def listns() -> list[int] | None:
    """Every namespace id the kernel lists for us, or None where listns() does not exist."""
    ids: list[int] = []
    batch = (ctypes.c_uint64 * 1024)()
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


# --- the new mount API (Linux 5.12 for idmapped mounts) --------------------------------------


class MountAttr(ctypes.Structure):
    """struct mount_attr (MOUNT_ATTR_SIZE_VER0)."""

    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def open_tree(path: str, flags: int, dirfd: int = -100) -> int:
    return syscall(SYS_OPEN_TREE, ctypes.c_int(dirfd), os.fsencode(path), ctypes.c_uint(flags))


def mount_setattr(fd: int, attr: MountAttr, flags: int = AT_EMPTY_PATH, path: str = "") -> None:
    syscall(SYS_MOUNT_SETATTR, ctypes.c_int(fd), os.fsencode(path), ctypes.c_uint(flags),
            ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)))


def move_mount(from_fd: int, to_path: str, flags: int = MOVE_MOUNT_F_EMPTY_PATH) -> None:
    syscall(SYS_MOVE_MOUNT, ctypes.c_int(from_fd), b"", ctypes.c_int(-100), os.fsencode(to_path),
            ctypes.c_uint(flags))


# --- listmount() and statmount() (Linux 6.8; by mount namespace id from 6.11) --------------------
# include/uapi/linux/mount.h: struct mnt_id_req (MNT_ID_REQ_SIZE_VER1 = 32, with mnt_ns_id), struct
# statmount (a fixed part of 512 bytes, then str[]: the [str] fields are offsets into it).

LSMT_ROOT: Final = 0xFFFF_FFFF_FFFF_FFFF
STATMOUNT_SB_BASIC: Final = 0x01
STATMOUNT_MNT_BASIC: Final = 0x02
STATMOUNT_MNT_ROOT: Final = 0x08
STATMOUNT_MNT_POINT: Final = 0x10
STATMOUNT_FS_TYPE: Final = 0x20
NSFS_MAGIC: Final = 0x6E736673  # include/uapi/linux/magic.h
_STATMOUNT_FIXED = 512
#: offsets in struct statmount: size (u32), sb_magic (u64), fs_type, mnt_id (u64), mnt_root, mnt_point
_SM_SIZE, _SM_MAGIC, _SM_FS_TYPE, _SM_MNT_ID, _SM_ROOT, _SM_POINT = 0, 24, 36, 40, 104, 108


class _MntIdReq(ctypes.Structure):
    _fields_ = [
        ("size", ctypes.c_uint32),
        ("spare", ctypes.c_uint32),
        ("mnt_id", ctypes.c_uint64),
        ("param", ctypes.c_uint64),
        ("mnt_ns_id", ctypes.c_uint64),
    ]


class StatMount(NamedTuple):
    mnt_id: int
    sb_magic: int
    fs_type: str
    root: str  # for a bind-mounted namespace file: "net:[4026532290]"
    mountpoint: str  # relative to that mount namespace's root


def listmount(mnt_ns_id: int) -> list[int] | None:
    """The (unique, 64-bit) ids of every mount of a mount namespace, given its id, without being in
    it; None where the kernel cannot (no listmount(), Linux < 6.8; no mnt_ns_id, < 6.11)."""
    ids: list[int] = []
    batch = (ctypes.c_uint64 * 512)()
    last = 0
    while True:
        req = _MntIdReq(ctypes.sizeof(_MntIdReq), 0, LSMT_ROOT, last, mnt_ns_id)
        n = _syscall(ctypes.c_long(SYS_LISTMOUNT), ctypes.byref(req), batch, ctypes.c_size_t(512), ctypes.c_uint(0))
        if n < 0:
            err = ctypes.get_errno()
            if err in (errno.ENOSYS, errno.EINVAL, errno.E2BIG) and not ids:
                return None
            raise OSError(err, os.strerror(err))
        ids.extend(batch[:n])
        if n < 512:
            return ids
        last = ids[-1]


def statmount(mnt_id: int, mnt_ns_id: int) -> StatMount:
    """Type, root and mountpoint of one mount of a mount namespace (given both ids)."""
    size = 4096
    while True:
        buf = ctypes.create_string_buffer(_STATMOUNT_FIXED + size)
        mask = STATMOUNT_SB_BASIC | STATMOUNT_MNT_BASIC | STATMOUNT_MNT_ROOT | STATMOUNT_MNT_POINT | STATMOUNT_FS_TYPE
        req = _MntIdReq(ctypes.sizeof(_MntIdReq), 0, mnt_id, mask, mnt_ns_id)
        if _syscall(ctypes.c_long(SYS_STATMOUNT), ctypes.byref(req), buf, ctypes.c_size_t(len(buf)),
                    ctypes.c_uint(0)) >= 0:
            break
        err = ctypes.get_errno()
        if err != errno.EOVERFLOW or size > 1 << 20:
            raise OSError(err, os.strerror(err))
        size *= 4  # the strings did not fit
    raw = buf.raw

    def text(field: int) -> str:
        start = _STATMOUNT_FIXED + struct.unpack_from("I", raw, field)[0]
        return os.fsdecode(raw[start:raw.index(b"\0", start)])

    return StatMount(struct.unpack_from("Q", raw, _SM_MNT_ID)[0], struct.unpack_from("Q", raw, _SM_MAGIC)[0],
                     text(_SM_FS_TYPE), text(_SM_ROOT), text(_SM_POINT))
def clone_tree(fd: int, recursive: bool = False) -> int:
    """open_tree(fd, "", OPEN_TREE_CLONE | AT_EMPTY_PATH): a detached bind mount of what fd is (a
    directory, a file, an nsfs namespace file), to attach with move_mount_onto()."""
    flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_EMPTY_PATH | (AT_RECURSIVE if recursive else 0)
    return syscall(SYS_OPEN_TREE, ctypes.c_int(fd), b"", ctypes.c_uint(flags))


def move_mount_onto(from_fd: int, to_fd: int) -> None:
    """move_mount(from_fd, "", to_fd, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH): attach a
    detached mount onto the very file or directory to_fd was opened on (an O_PATH handle that was
    checked), whatever has been renamed or replaced on its path since."""
    syscall(SYS_MOVE_MOUNT, ctypes.c_int(from_fd), b"", ctypes.c_int(to_fd), b"",
            ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH))


def fsopen(fstype: str) -> int:
    """fsopen(2): a filesystem context to configure (mount.h)."""
    return syscall(SYS_FSOPEN, fstype.encode(), ctypes.c_uint(FSOPEN_CLOEXEC))


def fsconfig(fs_fd: int, key: str, value: str | None = None) -> None:
    """fsconfig(2): FSCONFIG_SET_STRING key=value, or FSCONFIG_SET_FLAG key when value is None."""
    if value is None:
        syscall(SYS_FSCONFIG, ctypes.c_int(fs_fd), ctypes.c_uint(FSCONFIG_SET_FLAG), key.encode(), None, ctypes.c_int(0))
    else:
        syscall(SYS_FSCONFIG, ctypes.c_int(fs_fd), ctypes.c_uint(FSCONFIG_SET_STRING), key.encode(), value.encode(),
                ctypes.c_int(0))


def fsmount(fs_fd: int, attr_flags: int = 0) -> int:
    """FSCONFIG_CMD_CREATE, then fsmount(2): a detached mount of the configured filesystem."""
    syscall(SYS_FSCONFIG, ctypes.c_int(fs_fd), ctypes.c_uint(FSCONFIG_CMD_CREATE), None, None, ctypes.c_int(0))
    return syscall(SYS_FSMOUNT, ctypes.c_int(fs_fd), ctypes.c_uint(FSMOUNT_CLOEXEC), ctypes.c_uint(attr_flags))


# --- fstatfs(2): which filesystem a file is on (include/uapi/linux/magic.h) ---------------------

#: f_type of the filesystems namespacefs names in its messages (linux/magic.h).
FS_MAGIC: Final[dict[int, str]] = {
    0xEF53: "ext4", 0x58465342: "xfs", 0x9123683E: "btrfs", 0x01021994: "tmpfs", 0x794C7630: "overlay",
    0xF2F52010: "f2fs", 0x858458F6: "ramfs", 0x2FC12FC1: "zfs", 0xCA451A4E: "bcachefs", 0x4D44: "vfat",
    0x6969: "nfs", 0x52654973: "reiserfs", 0x3153464A: "jfs",
    0x9FA0: "proc", 0x62656572: "sysfs", 0x0027E0EB: "cgroup", 0x63677270: "cgroup2", 0x73636673: "securityfs",
    0x64626720: "debugfs", 0x74726163: "tracefs", 0xCAFE4A11: "bpf", 0x6E736673: "nsfs", 0x65735546: "fuse",
    0x1CD1: "devpts", 0x62656570: "configfs", 0x6165676C: "pstore", 0xDE5E81E4: "efivarfs",
    0x958458F6: "hugetlbfs", 0x19800202: "mqueue", 0x42494E4D: "binfmt_misc", 0x0187: "autofs",
    0xF97CFF8C: "selinuxfs", 0x43415D53: "smackfs", 0x73717368: "squashfs", 0xE0F5E1E2: "erofs",
    0x50495045: "pipefs", 0x534F434B: "sockfs", 0x09041934: "anon_inode",
}
_statfs = _libc.fstatfs
_statfs.argtypes = (ctypes.c_int, ctypes.c_void_p)


def fstatfs_type(fd: int) -> int:
    """f_type of the filesystem fd (an O_PATH handle will do) is on: the first field of struct
    statfs, a long (__fsword_t) on every 64-bit architecture."""
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on x86_64
    _check(_statfs(fd, buf))
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


# --- mount(2) and umount2(2) from libc ---------------------------------------------------------

MS_RDONLY: Final = 0x1
MS_BIND: Final = 0x1000
MS_REC: Final = 0x4000
MS_SLAVE: Final = 1 << 19
MNT_DETACH: Final = 2


def mount(source: str, target: str, fstype: str | None = None, flags: int = 0, data: str | None = None) -> None:
    _check(_libc.mount(os.fsencode(source), os.fsencode(target), fstype and fstype.encode(),
                       ctypes.c_ulong(flags), data and data.encode()))


def umount(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(os.fsencode(target), ctypes.c_int(flags)))


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


# --- the proc connector (issue 7: the live service) --------------------------------------------
# include/uapi/linux/netlink.h (struct nlmsghdr), include/uapi/linux/connector.h (struct cn_msg,
# CN_IDX_PROC, CN_VAL_PROC), include/uapi/linux/cn_proc.h (enum proc_cn_mcast_op, struct proc_event).

NETLINK_CONNECTOR: Final = 11
CN_IDX_PROC: Final = 1
CN_VAL_PROC: Final = 1
NLMSG_DONE: Final = 3
NLMSG_ERROR: Final = 2
NLMSG_OVERRUN: Final = 4
PROC_CN_MCAST_LISTEN: Final = 1
PROC_CN_MCAST_IGNORE: Final = 2
SO_RCVBUFFORCE: Final = 33
#: enum what in struct proc_event
PROC_EVENT_FORK: Final = 0x00000001
PROC_EVENT_EXEC: Final = 0x00000002
PROC_EVENT_EXIT: Final = 0x80000000
NLMSGHDR: Final = struct.Struct("=IHHII")  # len, type, flags, seq, pid
CN_MSG: Final = struct.Struct("=IIIIHH")  # id.idx, id.val, seq, ack, len, flags
PROC_EVENT_HEAD: Final = struct.Struct("=IIQ")  # what, cpu, timestamp_ns (aligned(8): offset 8)
PROC_EVENT_IDS: Final = struct.Struct("=IIII")  # fork: parent pid/tgid, child pid/tgid; exec/exit: pid, tgid, ...


def proc_connector_open(rcvbuf: int = 8 << 20) -> socket.socket:
    """A netlink socket subscribed to the kernel's process events (needs CAP_NET_ADMIN, init netns).
    Raises OSError when the kernel has no proc connector (CONFIG_PROC_EVENTS=n) or access is denied."""
    import socket  # (the service alone needs it; kernel is imported by every command)

    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((0, CN_IDX_PROC))
        op = struct.pack("=I", PROC_CN_MCAST_LISTEN)
        cn = CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(op), 0) + op
        sock.send(NLMSGHDR.pack(NLMSGHDR.size + len(cn), NLMSG_DONE, 0, 0, 0) + cn)
    except OSError:
        sock.close()
        raise
    return sock


def parse_proc_events(data: bytes) -> list[tuple[int, int, int]]:
    """(what, pid, tgid) for each proc event in one netlink datagram; for fork, the child's pid/tgid."""
    out = []
    offset = 0
    while offset + NLMSGHDR.size <= len(data):
        length, kind, _flags, _seq, _pid = NLMSGHDR.unpack_from(data, offset)
        if length < NLMSGHDR.size:
            break
        body = offset + NLMSGHDR.size
        if kind == NLMSG_DONE and body + CN_MSG.size + 16 + PROC_EVENT_IDS.size <= offset + length:
            idx, val, *_ = CN_MSG.unpack_from(data, body)
            if (idx, val) == (CN_IDX_PROC, CN_VAL_PROC):
                event = body + CN_MSG.size
                what, _cpu, _ts = PROC_EVENT_HEAD.unpack_from(data, event)
                a, b, c, d = PROC_EVENT_IDS.unpack_from(data, event + 16)
                out.append((what, c, d) if what == PROC_EVENT_FORK else (what, a, b))
        offset += (length + 3) & ~3
    return out


# --- rtnetlink RTM_GETNSID: the id our net namespace's netlink uses for another one ---------------

RTM_GETNSID: Final = 90  # rtnetlink.h
NLM_F_REQUEST: Final = 0x1  # netlink.h
NETNSA_NSID, NETNSA_FD = 1, 3  # net_namespace.h
RTGENMSG: Final = struct.Struct("=Bxxx")  # struct rtgenmsg, padded to 4
NLATTR: Final = struct.Struct("=HH")  # struct nlattr: len, type


def netnsid(netns_fd: int) -> int | None:
    """The netnsid our net namespace assigned to the net namespace behind netns_fd, or None where
    none is assigned (or rtnetlink refuses). Raises OSError if no netlink socket can be made."""
    import socket  # (as for the proc connector: only some commands need it)

    body = RTGENMSG.pack(socket.AF_UNSPEC) + NLATTR.pack(8, NETNSA_FD) + struct.pack("=I", netns_fd)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.send(NLMSGHDR.pack(NLMSGHDR.size + len(body), RTM_GETNSID, NLM_F_REQUEST, 1, 0) + body)
        reply = sock.recv(4096)
    return parse_netnsid(reply)


def parse_netnsid(reply: bytes) -> int | None:
    """NETNSA_NSID of an RTM_NEWNSID reply (None for an error reply or a negative id: none assigned)."""
    if len(reply) < NLMSGHDR.size:
        return None
    _, msg_type, _, _, _ = NLMSGHDR.unpack_from(reply)
    if msg_type == NLMSG_ERROR:
        return None
    offset = NLMSGHDR.size + RTGENMSG.size
    while offset + NLATTR.size <= len(reply):
        length, kind = NLATTR.unpack_from(reply, offset)
        if length < NLATTR.size:
            break
        if kind == NETNSA_NSID and offset + 8 <= len(reply):
            value: int = struct.unpack_from("=i", reply, offset + NLATTR.size)[0]
            return None if value < 0 else value
        offset += (length + 3) & ~3
    return None
