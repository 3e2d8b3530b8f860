"""What `nsfs enter` reads of its target process before joining it (nsenter's -e, -S/-G follow,
-c, -Z, and the shell to run): plain /proc reads, each failing with EnterError."""

from __future__ import annotations

import os


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
