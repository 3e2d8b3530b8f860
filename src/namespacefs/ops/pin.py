"""Pinning: a bind mount of a namespace file keeps the namespace alive after its last process
(what `ip netns add` does for net namespaces), for every type.

A mount namespace can only be pinned in a mount that does not propagate: a bind mount of an mnt
namespace file on a shared mount could propagate into that very namespace and make a loop that
could never be freed, so the kernel refuses it (EINVAL). We check first and say what to do.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from dataclasses import dataclass

from namespacefs import kernel, mountpoints, procfs


class PinError(RuntimeError):
    """str() says, for the user, why pinning or unpinning failed."""


@dataclass(frozen=True)
class Pin:
    path: str
    type: str
    inode: int
    created: bool  # we created the file the namespace is mounted on


def _mount_of(path: str) -> tuple[procfs.Mount, list[str]] | None:
    """The mount that contains path, with its optional fields (shared:N, master:N ...)."""
    with open("/proc/self/mountinfo", "rb") as f:
        data = f.read()
    best: tuple[procfs.Mount, list[str]] | None = None
    lines = data.decode(errors="surrogateescape").splitlines()
    for m, line in zip(procfs.parse_mountinfo(data), lines, strict=False):
        mp = m.mountpoint
        inside = path == mp or path.startswith(mp.rstrip("/") + "/")
        if inside and (best is None or len(mp) >= len(best[0].mountpoint)):
            best = (m, line.partition(" - ")[0].split(" ")[6:])
    return best


def propagation(path: str) -> str:
    """'shared', 'slave' or 'private' for the mount that holds path."""
    found = _mount_of(os.path.realpath(path))
    if found is None:
        return "private"
    optional = found[1]
    if any(o.startswith("shared:") for o in optional):
        return "shared"
    if any(o.startswith("master:") for o in optional):
        return "slave"
    return "private"


def pin(ns_fd: int, dest: str) -> Pin:
    """Bind-mount the namespace behind ns_fd on dest (a file, created if missing), through
    namespacefs.mountpoints: only on an ordinary filesystem, onto the very file that was checked."""
    nstype = kernel.ns_type(ns_fd)
    inode = os.fstat(ns_fd).st_ino
    if not dest:
        raise PinError("an empty path; give the file to pin the namespace on")
    dest = os.path.abspath(dest)
    try:
        parent, name = mountpoints.split(dest)
        with mountpoints.opened_dir(parent) as parent_fd:
            return _pin_in(ns_fd, nstype, inode, parent_fd, parent, name, dest)
    except mountpoints.Refused as e:
        raise PinError(str(e)) from None


def _pin_in(ns_fd: int, nstype: str, inode: int, parent_fd: int, parent: str, name: str, dest: str) -> Pin:
    if (held := pinned(dest)) is not None:  # (a pin's handle is the nsfs file: say what it pins)
        same = held == (nstype, inode)
        raise PinError(f"{dest} already pins {held[0]}:[{held[1]}]" +
                       ("" if same else "; unpin it first or choose another file"))
    target = mountpoints.open_target(parent_fd, name, dest)
    created = target is None
    try:
        if target is None:
            try:
                mountpoints.check(parent_fd, parent)
            except mountpoints.Refused as e:
                raise PinError(f"cannot create {dest}: {e}") from None
        else:
            _check_dest(target, dest)
        if nstype == "mnt" and propagation(parent) == "shared":
            raise PinError(
                f"{parent} is on a shared mount: a mount namespace pinned there could propagate into itself "
                f"(a loop the kernel refuses). Pin it under a private mount, for example: "
                f"mount --bind {parent} {parent} && mount --make-private {parent}")
        if target is None:
            try:
                target = os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o444,
                                 dir_fd=parent_fd)
            except OSError as e:
                raise PinError(f"cannot create {dest}: {e.strerror}") from None
        _attach(ns_fd, nstype, target, dest)
    except BaseException:
        if created and target is not None:
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=parent_fd)
        raise
    finally:
        if target is not None:
            os.close(target)
    return Pin(dest, nstype, inode, created)


def _attach(ns_fd: int, nstype: str, target: int, dest: str) -> None:
    try:
        tree = kernel.clone_tree(ns_fd)
    except OSError as e:
        raise PinError(f"cannot bind-mount the {nstype} namespace: {e.strerror}") from None
    try:
        mountpoints.attach(tree, target)
    except OSError as e:
        if e.errno == errno.EINVAL and nstype == "mnt":
            raise PinError(f"the kernel refused to pin this mount namespace on {dest} (EINVAL): it would make "
                           f"a loop, since the namespace is not newer than the one {dest} lives in, or "
                           f"the mount there propagates") from None
        raise PinError(f"cannot bind-mount the {nstype} namespace on {dest}: {e.strerror}") from None
    finally:
        os.close(tree)


def _check_dest(target: int, dest: str) -> None:
    """Refuse what would hide a file's contents (or a directory) under a pin."""
    st = os.fstat(target)
    if stat.S_ISDIR(st.st_mode):
        raise PinError(f"{dest} is a directory; a namespace is pinned on a file")
    if not stat.S_ISREG(st.st_mode) or st.st_size > 0:  # a bind mount would hide it until unpinned
        raise PinError(f"{dest} exists and is not an empty file; pin on a new or empty file")


def pinned(path: str) -> tuple[str, int] | None:
    """(type, inode) if path is a namespace bind mount, else None."""
    found = _mount_of(os.path.realpath(path))
    if found is None or found[0].mountpoint != os.path.realpath(path) or found[0].fstype != "nsfs":
        return None
    return procfs.parse_ns_link(found[0].root)


def unpin(path: str, remove: bool = True) -> tuple[str, int]:
    """Unmount a pinned namespace (and remove the empty file it was on); returns (type, inode)."""
    if not path:
        raise PinError("an empty path; give a pinned namespace file")
    path = os.path.abspath(path)
    what = pinned(path)
    if what is None:
        raise PinError(f"{path} is not a pinned namespace (no nsfs bind mount there)")
    try:
        kernel.umount(path)
    except OSError as e:
        raise PinError(f"cannot unmount {path}: {e.strerror}") from None
    if remove:
        try:
            if os.path.isfile(path) and os.path.getsize(path) == 0 and pinned(path) is None:
                os.unlink(path)
        except OSError:
            pass
    return what
