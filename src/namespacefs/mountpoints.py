"""Where namespacefs may mount: the one rule for every mount it makes (pins, shift's idmapped
mounts, the FUSE filesystem), the handle the mount is then made on, and unmounting (unmount()).

A mount hides what is under it from every process of the mount namespace, so it goes only on an
ordinary file or directory of an ordinary filesystem (ext4, xfs, btrfs, tmpfs, overlay, ...): never
on proc, sysfs, devtmpfs, a cgroup hierarchy, securityfs, debugfs, tracefs, bpf, nsfs, a FUSE
filesystem (ours or anyone's) — a pin on /proc/version would make every process's read of it fail
until someone unmounts it. The target is opened once, as an O_PATH handle with O_NOFOLLOW on its
last component (a symlink planted there is refused, never followed); the checks (fstat, fstatfs,
the mount it lies on) are made on that handle, and the mount is attached to that same handle with
move_mount(MOVE_MOUNT_T_EMPTY_PATH): nothing renamed or swapped on the path in between can redirect
it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator

from namespacefs import kernel, procfs
from namespacefs.discover.processes import read_at

#: The filesystems a mount may go on, by f_type (linux/magic.h), as kernel.FS_MAGIC names them.
ORDINARY = frozenset({"ext4", "xfs", "btrfs", "tmpfs", "overlay", "f2fs", "ramfs", "zfs", "bcachefs", "vfat",
                      "nfs", "reiserfs", "jfs"})
#: Filesystems whose f_type passes for an ordinary one (devtmpfs is a tmpfs inside), told apart by
#: the type of the mount the handle lies on.
NOT_ORDINARY_MOUNTS = frozenset({"devtmpfs", "rootfs"})


class Refused(Exception):
    """A place namespacefs will not mount on; str() says why, for the user."""


#: The kernel's own trees: a filesystem mounted anywhere in them (the tmpfs at /sys/fs/cgroup that
#: holds the cgroup v1 hierarchies, /dev itself) is the kernel's or the init system's, never a place
#: for a pin. (/dev/shm is the one ordinary tmpfs in them.)
KERNEL_TREES = ("/proc", "/sys", "/dev")
ORDINARY_IN_KERNEL_TREES = ("/dev/shm",)


def mount_of(fd: int) -> procfs.Mount | None:
    """The mount fd lies on, from its mnt_id (fdinfo) in our mountinfo."""
    try:
        with open(f"/proc/self/fdinfo/{fd}") as f:
            mnt_id = next((int(line.split()[1]) for line in f if line.startswith("mnt_id:")), None)
        table = procfs.parse_mountinfo(read_at("/proc/self/mountinfo"))
    except (OSError, ValueError, IndexError):
        return None
    return next((m for m in table if m.mount_id == mnt_id), None)


def _inside(path: str, tops: tuple[str, ...]) -> bool:
    return any(path == top or path.startswith(top + "/") for top in tops)


def check(fd: int, path: str) -> None:
    """Refused unless the file or directory behind fd is on an ordinary filesystem, mounted outside
    the kernel's own trees."""
    try:
        magic = kernel.fstatfs_type(fd)
    except OSError as e:
        raise Refused(f"{path}: {e.strerror}") from None
    name = kernel.FS_MAGIC.get(magic, f"filesystem 0x{magic:x}")
    mount = mount_of(fd)
    mounted = mount.fstype if mount is not None else ""
    if mounted in NOT_ORDINARY_MOUNTS or mounted.startswith("fuse"):
        name = mounted
    if name not in ORDINARY:
        raise Refused(f"{path} is on {name}, not an ordinary filesystem; namespacefs mounts only on files and "
                      f"directories of {', '.join(sorted(ORDINARY))}")
    where = mount.mountpoint if mount is not None else "/"
    if _inside(where, KERNEL_TREES) and not _inside(where, ORDINARY_IN_KERNEL_TREES):
        raise Refused(f"{path} is on the {name} mounted at {where}, inside the kernel's own {where.split('/')[1]} tree, "
                      "not an ordinary filesystem; namespacefs mounts nothing there")


def split(path: str) -> tuple[str, str]:
    """(absolute parent directory, last component) of a path the user gave."""
    if not path:
        raise Refused("an empty path")
    full = os.path.abspath(path)
    parent, name = os.path.split(full)
    if not name or name in (".", ".."):
        raise Refused(f"{path} does not name a file or directory")
    return parent, name


@contextlib.contextmanager
def opened_dir(parent: str) -> Iterator[int]:
    """An O_PATH handle of a directory the user named (symlinks in it are the user's own path)."""
    try:
        fd = os.open(parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise Refused(f"{parent} is not a directory" if e.errno in (2, 20) else f"{parent}: {e.strerror}") from None
    try:
        yield fd
    finally:
        os.close(fd)


def open_target(parent_fd: int, name: str, path: str) -> int | None:
    """An O_PATH | O_NOFOLLOW handle of `name` in the directory parent_fd, checked (ordinary
    filesystem, not a symlink); None when nothing is there."""
    try:
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise Refused(f"{path}: {e.strerror}") from None
    try:
        if stat.S_ISLNK(os.fstat(fd).st_mode):
            raise Refused(f"{path} is a symbolic link; give the file or directory itself")
        check(fd, path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_checked(path: str, shown: str) -> int | None:
    """The checked O_PATH handle of path (shown to the user as `shown`) that a mount is attached
    to; None if it went away meanwhile. Refused says why a path may not carry a mount."""
    parent, name = split(path)
    with opened_dir(parent) as parent_fd:
        return open_target(parent_fd, name, shown)


def attach(tree_fd: int, target_fd: int) -> None:
    """Attach the detached mount tree_fd onto the checked handle target_fd (OSError from the kernel)."""
    kernel.move_mount_onto(tree_fd, target_fd)


# --- unmounting ------------------------------------------------------------------------------


class UnmountFailed(Exception):
    """An unmount the kernel refused; str() says why, for the user (errno: the kernel's)."""

    def __init__(self, message: str, errno_: int) -> None:
        super().__init__(message)
        self.errno = errno_


def unmount(path: str, lazy: bool = False) -> None:
    """umount2(path), MNT_DETACH with lazy; the one place that turns the kernel's refusals into a
    sentence (EBUSY: something is open there, EPERM: not root)."""
    try:
        kernel.umount(path, kernel.MNT_DETACH if lazy else 0)
    except OSError as e:
        if e.errno == errno.EBUSY:
            message = (f"{path} is busy (a process has a file open or its working directory there); "
                       "close it or use --lazy")
        elif e.errno == errno.EPERM:
            message = f"not allowed to unmount {path} (run as root)"
        else:
            message = f"cannot unmount {path}: {e.strerror}"
        raise UnmountFailed(message, e.errno or 0) from None
