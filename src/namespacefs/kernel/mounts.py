"""The kernel layer, mounts: the new mount API (open_tree, move_mount, mount_setattr, fsopen,
fsconfig, fsmount), listmount/statmount, fstatfs, and mount(2)/umount2(2) from libc.

    include/uapi/linux/mount.h   struct mount_attr, MOUNT_ATTR_*, struct mnt_id_req, struct statmount
    include/uapi/linux/magic.h   filesystem magic numbers (fstatfs f_type)
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from typing import Final, NamedTuple

from namespacefs.kernel import (
    AT_EMPTY_PATH,
    AT_RECURSIVE,
    FSCONFIG_CMD_CREATE,
    FSCONFIG_SET_FLAG,
    FSCONFIG_SET_STRING,
    FSMOUNT_CLOEXEC,
    FSOPEN_CLOEXEC,
    MOVE_MOUNT_F_EMPTY_PATH,
    MOVE_MOUNT_T_EMPTY_PATH,
    OPEN_TREE_CLOEXEC,
    OPEN_TREE_CLONE,
    SYS_FSCONFIG,
    SYS_FSMOUNT,
    SYS_FSOPEN,
    SYS_LISTMOUNT,
    SYS_MOUNT_SETATTR,
    SYS_MOVE_MOUNT,
    SYS_OPEN_TREE,
    SYS_STATMOUNT,
    _check,
    _libc,
    _syscall,
    syscall,
)

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


