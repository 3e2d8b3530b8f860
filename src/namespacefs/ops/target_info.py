"""What `nsfs enter` reads and opens of its targets before joining them: the target process's
environment, ids, cgroup, SELinux context and shell (nsenter's -e, -S/-G follow, -c, -Z), and the
namespace fds of nsenter's file options (--net=FILE, -N FD, --user-parent, -t PID:INODE); each
failure is an EnterError."""

from __future__ import annotations

import os

from namespacefs import kernel


class EnterError(RuntimeError):
    """The namespaces could not be joined or the command could not be started; str() says why."""


def default_shell(pid: int | None, proc: str = "/proc", in_its_root: bool = True) -> list[str]:
    """The target's $SHELL where the command will find it, else /bin/sh. in_its_root: the command
    runs under the target's root (its mount namespace is entered); else under ours."""
    if pid is not None:
        try:
            with open(f"{proc}/{pid}/environ", "rb") as f:
                env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
            shell = env.get(b"SHELL", b"").decode(errors="replace")
            root = f"{proc}/{pid}/root" if in_its_root else ""
            if shell.startswith("/") and os.path.exists(root + shell):
                return [shell]
        except OSError:
            pass
    return ["/bin/sh"]


def target_ids(pid: int, proc: str = "/proc") -> tuple[int, int] | None:
    """The real uid and gid of a process (nsenter -S follow, -G follow)."""
    try:
        with open(f"{proc}/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return int(fields["Uid"].split()[0]), int(fields["Gid"].split()[0])
    except (OSError, KeyError, ValueError):
        return None


def target_environment(pid: int, proc: str = "/proc") -> dict[bytes, bytes]:
    """The environment of process pid (nsenter -e)."""
    try:
        with open(f"{proc}/{pid}/environ", "rb") as f:
            return dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
    except OSError as e:
        raise EnterError(f"the environment of process {pid}: {e.strerror}") from None


def target_cgroup(pid: int, proc: str = "/proc") -> str:
    """The cgroup.procs file of process pid's cgroup v2 (nsenter -c)."""
    try:
        with open(f"{proc}/{pid}/cgroup") as f:
            path = next((line.split(":", 2)[2].strip() for line in f if line.startswith("0::")), None)
        with open("/proc/self/mounts") as f:
            roots = [line.split()[1] for line in f if line.split()[2:3] == ["cgroup2"]]
    except OSError as e:
        raise EnterError(f"the cgroup of process {pid}: {e.strerror}") from None
    if path is None or not roots:
        raise EnterError(f"process {pid} has no cgroup v2 to join")
    return f"{roots[0]}{path.rstrip('/')}/cgroup.procs"


def selinux_context(pid: int, proc: str = "/proc") -> bytes | None:
    """The SELinux context of process pid (nsenter -Z), or None when SELinux is off (no-op)."""
    if not os.path.exists("/sys/fs/selinux/enforce"):
        return None
    try:
        with open(f"{proc}/{pid}/attr/current", "rb") as f:
            return f.read().rstrip(b"\0\n")
    except OSError as e:
        raise EnterError(f"the SELinux context of process {pid}: {e.strerror}") from None


def open_namespace_file(path: str, nstype: str) -> int:
    """An fd of the namespace file `path` (nsenter --net=FILE), checked to be a `nstype` namespace."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise EnterError(f"{path}: {e.strerror}") from None
    try:
        found = kernel.ns_type(fd)
    except OSError:
        os.close(fd)
        raise EnterError(f"{path} is not a namespace file") from None
    if found != nstype:
        os.close(fd)
        raise EnterError(f"{path} is a {found} namespace, not {nstype}")
    return fd


def socket_netns(pid: int, fd: int) -> int:
    """An fd of the net namespace of process pid's socket fd (nsenter -N/--net-socket)."""
    try:
        pidfd = kernel.pidfd_open(pid)
    except OSError as e:
        raise EnterError(f"process {pid}: {e.strerror}") from None
    try:
        sock = kernel.pidfd_getfd(pidfd, fd)
    except OSError as e:
        raise EnterError(f"fd {fd} of process {pid}: {e.strerror}") from None
    finally:
        os.close(pidfd)
    try:
        return kernel.socket_netns_fd(sock)
    except OSError as e:
        raise EnterError(f"fd {fd} of process {pid} is not a socket ({e.strerror})") from None
    finally:
        os.close(sock)


def user_parent(fd: int) -> int:
    """The parent user namespace of a user namespace fd, or the owner of any other (--user-parent)."""
    try:
        up = kernel.ns_parent_fd(fd) if kernel.ns_type(fd) == "user" else kernel.ns_owner_fd(fd)
    except OSError as e:
        raise EnterError(f"the parent user namespace: {e.strerror}") from None
    if up is None:
        raise EnterError("the parent user namespace is not visible from here")
    return up


def check_pidfs_inode(pid: int, inode: int) -> None:
    """-t PID:INODE (nsenter 2.42): the process must still be the one whose pidfd has this inode."""
    try:
        pidfd = kernel.pidfd_open(pid)
    except OSError as e:
        raise EnterError(f"process {pid}: {e.strerror}") from None
    try:
        if os.fstat(pidfd).st_ino != inode:
            raise EnterError(f"process {pid} is not the process {pid}:{inode} (its pidfd inode is another)")
    finally:
        os.close(pidfd)


def process_exists(pid: int, proc: str = "/proc") -> bool:
    """Is there a process with this pid (nsenter -t PID of one that is not: say so)?"""
    return os.path.exists(f"{proc}/{pid}")


def open_ns_link(pid: int, link: str, proc: str = "/proc") -> int:
    """An fd of /proc/PID/ns/LINK."""
    try:
        return os.open(f"{proc}/{pid}/ns/{link}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise EnterError(f"the {link} namespace of process {pid}: {e.strerror}") from None
