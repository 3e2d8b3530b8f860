"""Mounting and unmounting the filesystem: stale-mount detection, the server loop, clean shutdown."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import stat
import subprocess
import tempfile
from collections.abc import Callable

import trio

from namespacefs import kernel, mountpoints, procfs
from namespacefs.discover import SOURCES
from namespacefs.discover.processes import read_at
from namespacefs.fs.operations import NamespaceFS
from namespacefs.fs.session import Session
from namespacefs.fs.source import Source, snapshot_taker

log = logging.getLogger("namespacefs.fs")

DEFAULT_MOUNTPOINT = "/run/namespacefs"
FSNAME = "namespacefs"
FSTYPE = f"fuse.{FSNAME}"


class MountError(Exception):
    """A mount or unmount that cannot be done; str() says why, for the user."""


def absolute(path: str) -> str:
    """The absolute path of a mountpoint without touching the mountpoint itself (it may be stale)."""
    path = os.path.abspath(path)
    head, tail = os.path.split(path)
    return os.path.join(os.path.realpath(head), tail) if tail else path


def mounts_at(path: str) -> list[procfs.Mount]:
    """The mounts (ours or not) on this path in our mount namespace, oldest first."""
    return [m for m in procfs.parse_mountinfo(read_at("/proc/self/mountinfo")) if m.mountpoint == path]


def is_stale(path: str) -> bool:
    try:
        os.stat(path)
    except OSError as e:
        return e.errno == errno.ENOTCONN
    return False


def prepare(mountpoint: str, say: Callable[[str], None]) -> bool:
    """Make the mountpoint ready: clear a stale namespacefs mount left by a crashed server, refuse a
    live one. Returns whether the directory was created (and so should be removed afterwards)."""
    mounts = mounts_at(mountpoint)
    if mounts and mounts[-1].fstype == FSTYPE:
        if not is_stale(mountpoint):
            raise MountError(f"namespacefs is already mounted at {mountpoint} (nsfs umount {mountpoint} first)")
        result = subprocess.run(["fusermount3", "-u", "-z", mountpoint], capture_output=True, text=True)
        if result.returncode != 0:
            raise MountError(f"a stale namespacefs mount at {mountpoint} could not be cleared: {result.stderr.strip()}")
        say(f"cleared a stale namespacefs mount at {mountpoint} (its server had stopped)")
    elif mounts and is_stale(mountpoint):
        raise MountError(f"{mountpoint} is a dead mount of another filesystem ({mounts[-1].fstype}); unmount it first")
    if os.path.isdir(mountpoint) and not os.path.islink(mountpoint):
        return False
    if os.path.lexists(mountpoint):
        raise MountError(f"{mountpoint} is not a directory")
    try:
        os.mkdir(mountpoint, 0o755)
    except OSError as e:
        raise MountError(f"cannot create {mountpoint}: {e.strerror}") from None
    return True


def open_mountpoint(mountpoint: str) -> int:
    """The checked O_PATH handle of the mountpoint (namespacefs.mountpoints: an ordinary directory of
    an ordinary filesystem, not a symlink) that the filesystem is then attached to."""
    try:
        fd = mountpoints.open_checked(mountpoint, mountpoint)
    except mountpoints.Refused as e:
        raise MountError(str(e)) from None
    if fd is None:
        raise MountError(f"{mountpoint} went away")
    if not stat.S_ISDIR(os.fstat(fd).st_mode):
        os.close(fd)
        raise MountError(f"{mountpoint} is not a directory")
    return fd


def mount_fuse(target_fd: int, allow_other: bool) -> tuple[int, int]:
    """Mount a FUSE filesystem onto the checked handle target_fd, as libfuse would (fd=, rootmode=,
    user_id=, group_id=, nosuid, nodev, noatime) but with the new mount API: fsopen/fsconfig/fsmount,
    then move_mount onto the handle. Returns (the /dev/fuse fd to serve, the new mount's id)."""
    fuse_fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    try:
        fs_fd = kernel.fsopen("fuse")
        try:
            for key, value in (("source", FSNAME), ("subtype", FSNAME), ("fd", str(fuse_fd)), ("rootmode", "40000"),
                               ("user_id", str(os.getuid())), ("group_id", str(os.getgid()))):
                kernel.fsconfig(fs_fd, key, value)
            if allow_other:
                kernel.fsconfig(fs_fd, "allow_other")
            tree = kernel.fsmount(fs_fd, kernel.MOUNT_ATTR_NOSUID | kernel.MOUNT_ATTR_NODEV | kernel.MOUNT_ATTR_NOATIME)
        finally:
            os.close(fs_fd)
        try:
            mountpoints.attach(tree, target_fd)
            mount_id = _mount_id(tree)
        finally:
            os.close(tree)
    except BaseException:
        os.close(fuse_fd)
        raise
    return fuse_fd, mount_id


def _mount_id(fd: int) -> int:
    with open(f"/proc/self/fdinfo/{fd}") as f:
        return next((int(line.split()[1]) for line in f if line.startswith("mnt_id:")), -1)


def serve(mountpoint: str, *, allow_other: bool = False, db: str | None = None,
          sources: tuple[str, ...] | None = None, debug: bool = False,
          ready: Callable[[str], None] | None = None, say: Callable[[str], None] | None = None) -> None:
    """Mount namespacefs on mountpoint and serve it until it is unmounted or SIGINT/SIGTERM/SIGHUP
    arrives; then unmount and remove the mountpoint if this call created it."""
    say = say or (lambda message: log.warning("%s", message))
    mountpoint = absolute(mountpoint)
    if not os.path.exists("/dev/fuse"):
        raise MountError("/dev/fuse is missing: load the fuse module (modprobe fuse)")
    take = snapshot_taker(sources or SOURCES, db)
    _Stop.install()
    created = prepare(mountpoint, say)
    try:
        try:
            source = Source(take, db)
        except OSError as e:
            raise MountError(f"cannot scan the namespaces: {e}") from None
        operations = NamespaceFS(source, filtered=allow_other, db=db)
        target = open_mountpoint(mountpoint)
        try:
            fuse_fd, mount_id = mount_fuse(target, allow_other)
        except OSError as e:
            raise MountError(f"cannot mount on {mountpoint}: {e.strerror}") from None
        finally:
            os.close(target)
        session = operations.session = Session(fuse_fd, operations, debug)
        try:
            if ready is not None:
                ready(mountpoint)
            if not _Stop.requested:
                trio.run(_main, source, session)
        finally:
            os.close(fuse_fd)
            _unmount_ours(mountpoint, mount_id)
    finally:
        if created:
            try:
                os.rmdir(mountpoint)
            except OSError as e:
                log.warning("could not remove %s: %s", mountpoint, e.strerror)


def _unmount_ours(mountpoint: str, mount_id: int) -> None:
    """Detach our mount if it is still the top one at the mountpoint (a user may have unmounted it)."""
    with contextlib.suppress(OSError):
        mounts = mounts_at(mountpoint)
        if mounts and mounts[-1].mount_id == mount_id:
            kernel.umount(mountpoint, kernel.MNT_DETACH)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _Stop:
    """Remembers a stop signal that arrives before the event loop listens for them (so that trio
    never turns an early Ctrl-C into KeyboardInterrupt in the middle of a request)."""

    requested = False

    @classmethod
    def install(cls) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, cls.handle)

    @classmethod
    def handle(cls, signum: int, frame: object) -> None:
        cls.requested = True


async def _main(source: Source, session: Session) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(source.run)
        nursery.start_soon(_stop_on_signal, session)
        await session.run()
        nursery.cancel_scope.cancel()


async def _stop_on_signal(session: Session) -> None:
    with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
        if not _Stop.requested:
            async for _ in signals:
                break
        session.stop()


def unmount(mountpoint: str, lazy: bool = False) -> None:
    """Unmount a namespacefs mount (its server then exits by itself)."""
    mountpoint = absolute(mountpoint)
    mounts = mounts_at(mountpoint)
    if not mounts or mounts[-1].fstype != FSTYPE:
        raise MountError(f"{mountpoint} is not a namespacefs mount")
    try:
        dev: int | None = os.stat(mountpoint).st_dev
    except OSError:
        dev = None  # stale: its server is gone already
    try:
        mountpoints.unmount(mountpoint, lazy)
    except mountpoints.UnmountFailed as e:
        raise MountError(str(e)) from None
    if dev is not None:
        abort_connection(dev)


def abort_connection(dev: int) -> None:
    """End the FUSE connection of a filesystem we just unmounted, so that its server exits even if a
    copy of the mount lives on in another mount namespace (a container made while it was mounted
    copies it): those copies then fail with ENOTCONN instead of keeping the server alive. Uses the
    fusectl filesystem, mounted for the moment on a private temporary directory."""
    name = str((os.major(dev) << 20) | os.minor(dev))  # the kernel's dev_t, as fusectl names it
    with tempfile.TemporaryDirectory(prefix="nsfs-fusectl-") as where:
        try:
            kernel.mount("fusectl", where, "fusectl")
        except OSError as e:
            log.info("cannot mount fusectl (%s); a copy of the mount elsewhere keeps the server alive", e.strerror)
            return
        try:
            _abort(os.path.join(where, name))
        finally:
            kernel.umount(where, kernel.MNT_DETACH)


def _abort(connection: str) -> None:
    try:
        with open(os.path.join(connection, "abort"), "w") as f:
            f.write("1")
    except FileNotFoundError:
        pass  # the connection ended with the unmount: nothing held a copy
    except OSError as e:
        log.info("cannot abort FUSE connection %s: %s", connection, e.strerror)
