"""Id shifting at the mount: an idmapped mount of SRC at DST, so files owned by on-disk id X are
seen (and written) through DST as the id the mapping gives X, with no chown.

    open_tree(SRC, OPEN_TREE_CLONE)        a detached copy of the mount (or tree, with --recursive)
    mount_setattr(MOUNT_ATTR_IDMAP, usernsfd) the user namespace whose map is the id mapping
    move_mount(-> DST)                     attach it

Mapping semantics (one line 'A:B:N', as in a uid_map 'inside outside count'): on-disk ids
A..A+N-1 are seen through DST as B..B+N-1; ids outside the map show as the overflow id (65534) and
cannot be written. With --map a transient user namespace with exactly that map is made and released
(the mount keeps its own reference). With --userns the map of an existing user namespace is used.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import platform
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from namespacefs import kernel, mountpoints
from namespacefs.discover.processes import read_at
from namespacefs.ops import inside
from namespacefs.procfs import parse_mountinfo
from namespacefs.syntax import is_number, number

IdMap = tuple[tuple[int, int, int], ...]
MAX_ID = 2**32 - 1  # (u32)-1 is never a valid id
MAX_EXTENTS = 340  # kernel/user_namespace.c: UID_GID_MAP_MAX_EXTENTS
#: Filesystems known to support idmapped mounts, with the release that added each (for messages).
IDMAP_FILESYSTEMS = ("ext4 (5.12)", "fat/vfat (5.12)", "xfs (5.12)", "btrfs (5.15)", "f2fs (5.18)", "overlay (5.19)",
                     "erofs (5.19)", "squashfs (6.3)", "tmpfs (6.3)", "ntfs3 (6.3)", "fuse with default_permissions (6.12)",
                     "bcachefs (6.12)")


class ShiftError(Exception):
    """A request that cannot be done; the message says why, for the user."""


# --- maps --------------------------------------------------------------------------------------


def parse_map(text: str) -> tuple[int, int, int]:
    """'CONTAINER:HOST:COUNT' (on-disk:seen:count for a mount) -> (inside, outside, count)."""
    parts = text.split(":")
    if len(parts) != 3:
        raise ShiftError(f"malformed map '{text}': expected FROM:TO:COUNT, e.g. 0:100000:65536")
    if any(p.startswith("-") and is_number(p[1:]) for p in parts):
        raise ShiftError(f"malformed map '{text}': ids must be >= 0 and COUNT >= 1")
    try:
        inside, outside, count = (number(p) for p in parts)
    except ValueError:
        raise ShiftError(f"malformed map '{text}': FROM, TO and COUNT must be decimal numbers") from None
    if inside < 0 or outside < 0 or count < 1:
        raise ShiftError(f"malformed map '{text}': ids must be >= 0 and COUNT >= 1")
    if inside + count > MAX_ID or outside + count > MAX_ID:
        raise ShiftError(f"malformed map '{text}': ids run past {MAX_ID - 1}, the highest valid id")
    return inside, outside, count


def check_map(lines: Sequence[tuple[int, int, int]], kind: str = "uid") -> IdMap:
    """A map the kernel will accept: non-empty, at most 340 lines, neither side overlapping."""
    if not lines:
        raise ShiftError(f"the {kind} map is empty")
    if len(lines) > MAX_EXTENTS:
        raise ShiftError(f"the {kind} map has {len(lines)} lines; the kernel takes at most {MAX_EXTENTS}")
    for side, name in ((0, "FROM (on-disk/inside)"), (1, "TO (seen/outside)")):
        spans = sorted((line[side], line[side] + line[2], line) for line in lines)
        for (_s1, e1, l1), (s2, _e2, l2) in itertools.pairwise(spans):
            if s2 < e1:
                raise ShiftError(f"{kind} map lines {_fmt(l1)} and {_fmt(l2)} overlap on the {name} side")
    return tuple(tuple(line) for line in lines)  # type: ignore[misc]


def _fmt(line: tuple[int, int, int]) -> str:
    return ":".join(str(x) for x in line)


def map_text(idmap: IdMap) -> bytes:
    return b"".join(f"{a} {b} {n}\n".encode() for a, b, n in idmap)


def apply_map(idmap: IdMap, ident: int) -> int | None:
    """The id a map gives an on-disk id; None where the map does not cover it."""
    for first, outside, count in idmap:
        if first <= ident < first + count:
            return outside + ident - first
    return None


# --- a transient user namespace ----------------------------------------------------------------


@contextlib.contextmanager
def transient_userns(uid_map: IdMap, gid_map: IdMap) -> Iterator[int]:
    """An fd for a new user namespace with these maps, alive while the context lasts. A forked child
    unshares CLONE_NEWUSER and waits; we write its maps from here and open /proc/CHILD/ns/user; then
    the child is released and reaped (the fd, and any mount made with it, keep the namespace)."""
    hold_r, hold_w = os.pipe2(os.O_CLOEXEC)

    def child(ready: int) -> None:  # (ops.inside.start: plain os calls, never returns into the caller)
        os.close(hold_w)
        kernel.unshare(kernel.CLONE_FLAGS["user"])
        os.write(ready, b"1")
        os.read(hold_r, 1)  # until the parent closes its end

    try:
        helper = inside.start(child)
    finally:
        os.close(hold_r)
    fd = -1
    try:
        if os.read(helper.r, 1) != b"1":
            raise ShiftError("could not create a user namespace (unshare(CLONE_NEWUSER) failed)")
        try:
            _write(f"/proc/{helper.pid}/uid_map", map_text(uid_map))
            _write(f"/proc/{helper.pid}/gid_map", map_text(gid_map))
        except OSError as e:
            raise ShiftError(f"the kernel refused the id map ({e.strerror}); check it with --map") from None
        fd = os.open(f"/proc/{helper.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(hold_w)
        helper.finish()
    try:
        yield fd
    finally:
        os.close(fd)


def _write(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


# --- mounts ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MountInfo:
    mount_id: int
    parent_id: int
    mountpoint: str
    options: tuple[str, ...]  # per-mount options (ro, nosuid, idmapped, ...)
    fstype: str
    source: str

    @property
    def idmapped(self) -> bool:
        return "idmapped" in self.options


def mounts(pid: str = "self") -> list[MountInfo]:
    """This process's mount table (procfs.parse_mountinfo)."""
    return [MountInfo(m.mount_id, m.parent_id, m.mountpoint, m.options, m.fstype, m.source)
            for m in parse_mountinfo(read_at(f"/proc/{pid}/mountinfo"))]


def mount_of(path: str) -> MountInfo | None:
    """The mount a path lives on (by the mnt_id of an O_PATH fd, so bind mounts are told apart)."""
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        with open(f"/proc/self/fdinfo/{fd}") as f:
            mnt_id = next((int(line.split()[1]) for line in f if line.startswith("mnt_id:")), None)
    finally:
        os.close(fd)
    return next((m for m in mounts() if m.mount_id == mnt_id), None)


def is_mountpoint(path: str) -> bool:
    real = os.path.realpath(path)
    return any(m.mountpoint == real for m in mounts())


# --- shift and unshift -------------------------------------------------------------------------


def shift(src: str, dst: str, userns_fd: int, recursive: bool = False, read_only: bool = False) -> MountInfo:
    """Mount SRC at DST, idmapped through the user namespace behind userns_fd. Returns the new mount."""
    src_real, dst_real = _check_paths(src, dst)
    src_mount = mount_of(src_real)
    dst_fd = _mount_target(dst_real, dst)
    flags = kernel.OPEN_TREE_CLONE | kernel.OPEN_TREE_CLOEXEC | (kernel.AT_RECURSIVE if recursive else 0)
    try:
        tree = kernel.open_tree(src_real, flags)
    except OSError as e:
        os.close(dst_fd)
        raise ShiftError(f"cannot clone the mount of {src}: {e.strerror}") from None
    try:
        attr = kernel.MountAttr(kernel.MOUNT_ATTR_IDMAP | (kernel.MOUNT_ATTR_RDONLY if read_only else 0), 0, 0, userns_fd)
        try:
            kernel.mount_setattr(tree, attr, kernel.AT_EMPTY_PATH | (kernel.AT_RECURSIVE if recursive else 0))
        except OSError as e:
            raise ShiftError(_idmap_failure(e, src, src_mount, recursive)) from None
        try:
            mountpoints.attach(tree, dst_fd)
        except OSError as e:
            raise ShiftError(f"cannot attach the idmapped mount at {dst}: {e.strerror}") from None
    finally:
        os.close(tree)
        os.close(dst_fd)
    made = mount_of(dst_real)
    if made is None or not made.idmapped:
        raise ShiftError(f"the mount at {dst} is not idmapped after all (kernel {platform.release()})")
    return made


def _mount_target(dst_real: str, dst: str) -> int:
    """The checked O_PATH handle of DST the mount is attached to (namespacefs.mountpoints)."""
    try:
        fd = mountpoints.open_checked(dst_real, dst)
    except mountpoints.Refused as e:
        raise ShiftError(str(e)) from None
    if fd is None:
        raise ShiftError(f"{dst}: no such file or directory (it went away)")
    return fd


def _check_paths(src: str, dst: str) -> tuple[str, str]:
    if not os.path.exists(src):
        raise ShiftError(f"{src}: no such file or directory")
    if not os.path.lexists(dst):
        raise ShiftError(f"{dst}: no such file or directory (create an empty directory to mount on)")
    src_real, dst_real = os.path.realpath(src), os.path.realpath(dst)
    if os.path.isdir(src_real) != os.path.isdir(dst_real):
        raise ShiftError(f"{src} and {dst} must both be directories (or both files)")
    if src_real == dst_real:
        raise ShiftError(f"SRC and DST are the same path ({src_real}); mount the shifted view elsewhere")
    if is_mountpoint(dst_real):
        raise ShiftError(f"{dst} is busy: something is already mounted there (nsfs unshift {dst} first)")
    if os.path.isdir(dst_real) and os.listdir(dst_real):
        raise ShiftError(f"{dst} is not empty: its contents would be hidden by the mount; use an empty directory")
    return src_real, dst_real


def _idmap_failure(e: OSError, src: str, mount: MountInfo | None, recursive: bool) -> str:
    where = f"{mount.fstype} mounted at {mount.mountpoint}" if mount else "its filesystem"
    if mount is not None and mount.idmapped:
        return (f"{src} is on an idmapped mount already ({mount.mountpoint}) and the kernel does not idmap one twice; "
                f"shift the original directory instead")
    if e.errno == errno.EINVAL:
        sub = " (or one of the mounts below it, with --recursive)" if recursive else ""
        return (f"{src} is on {where}, which this kernel ({platform.release()}) cannot idmap{sub}. "
                f"Idmapped mounts need one of: {', '.join(IDMAP_FILESYSTEMS)}. Use --chown to rewrite ownership instead.")
    if e.errno == errno.EPERM:
        return f"idmapping {src} was refused (not permitted: needs CAP_SYS_ADMIN and a user namespace other than the initial one)"
    if e.errno == errno.ENOSYS:
        return f"this kernel ({platform.release()}) has no mount_setattr(2): idmapped mounts need Linux 5.12"
    return f"cannot idmap {src}: {e.strerror}"


def shift_with_map(src: str, dst: str, uid_map: IdMap, gid_map: IdMap | None = None,
                   recursive: bool = False, read_only: bool = False) -> MountInfo:
    """shift() through a transient user namespace with exactly these maps (gid map defaults to the uid map)."""
    uid_map = check_map(uid_map, "uid")
    gid_map = check_map(gid_map or uid_map, "gid")
    _check_paths(src, dst)
    with transient_userns(uid_map, gid_map) as fd:
        return shift(src, dst, fd, recursive, read_only)


def unshift(dst: str, lazy: bool = False, force: bool = False) -> list[str]:
    """Unmount the idmapped mount at DST (and idmapped mounts below it, deepest first). Returns the
    mountpoints unmounted. Refuses a mount that is not idmapped unless force."""
    real = os.path.realpath(dst)
    table = mounts()
    top = [m for m in table if m.mountpoint == real]
    if not top:
        raise ShiftError(f"{dst} is not a mount point")
    if not force and not top[-1].idmapped:
        raise ShiftError(f"{dst} is not an idmapped mount ({top[-1].fstype}, not made by nsfs shift); refusing to unmount it")
    below = sorted((m.mountpoint for m in table if m.mountpoint.startswith(real.rstrip("/") + "/") and m.idmapped),
                   key=len, reverse=True)
    done = []
    for path in [*below, real]:
        try:
            mountpoints.unmount(path, lazy)
        except mountpoints.UnmountFailed as e:
            if e.errno == errno.EINVAL and path != real:
                continue  # already gone with its parent
            raise ShiftError(str(e)) from None
        done.append(path)
    return done
