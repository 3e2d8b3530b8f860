"""A test helper process that makes one hard-to-find namespace shape for real, prints one JSON line
describing it, then waits to be killed. Independent of namespacefs, so tests check our discovery
against what the kernel was actually asked to do.

    python nsholder.py SHAPE [ARG]
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import sys
import threading
import time

libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET, CLONE_NEWTIME = 0x10000000, 0x20000000, 0x40000000, 0x00000080
MS_BIND, MS_REC, MS_PRIVATE = 0x1000, 0x4000, 0x40000
PR_SET_CHILD_SUBREAPER = 36


def check(result: int) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


def unshare(flags: int) -> None:
    check(libc.unshare(ctypes.c_int(flags)))


def inode(path: str) -> int:
    return os.stat(path).st_ino


def in_thread(func):  # type: ignore[no-untyped-def]
    """Run func in a new thread (whose namespaces can differ from the process's) and return its result."""
    out = []
    t = threading.Thread(target=lambda: out.append(func()))
    t.start()
    t.join()
    return out[0]


def ready(**info: object) -> None:
    print(json.dumps({"pid": os.getpid(), **info}), flush=True)


def thread_uts() -> None:
    """Only one thread of this process is in a new uts namespace."""
    done = threading.Event()
    info: dict[str, int] = {}

    def thread() -> None:
        unshare(CLONE_NEWUTS)
        socket.sethostname("thread-only")
        info["tid"] = threading.get_native_id()
        info["uts"] = inode("/proc/thread-self/ns/uts")
        done.set()
        time.sleep(3600)

    threading.Thread(target=thread, daemon=True).start()
    done.wait()
    ready(**info)


def fd_net() -> int:
    """A net namespace held only by an open fd: a thread made it, opened it and left."""
    def make() -> int:
        unshare(CLONE_NEWNET)
        return os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    fd = in_thread(make)
    ready(net=os.fstat(fd).st_ino, fd=fd)
    return fd


def socket_net(family: str = "udp") -> list[socket.socket]:
    """A net namespace held only by a socket created inside it (UDP, or "untabled": AF_XDP or
    AF_VSOCK, families no /proc/net table lists); the process also keeps sockets in its own net
    namespace."""
    def make() -> tuple[socket.socket, int]:
        unshare(CLONE_NEWNET)
        return _socket(family), inode("/proc/thread-self/ns/net")
    sock, net = in_thread(make)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    own = [listener, socket.socket(socket.AF_INET, socket.SOCK_DGRAM), *socket.socketpair()]
    ready(net=net, socket=os.fstat(sock.fileno()).st_ino, fd=sock.fileno(),
          own=[os.fstat(s.fileno()).st_ino for s in own])
    return [sock, *own]


def _socket(family: str) -> socket.socket:
    if family == "udp":
        return socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for args in ((44, socket.SOCK_RAW), (socket.AF_VSOCK, socket.SOCK_STREAM)):  # AF_XDP, AF_VSOCK
        try:
            return socket.socket(*args)
        except OSError:
            continue
    sys.exit("untabled: this kernel has neither AF_XDP nor AF_VSOCK sockets")


def private_bindmount(target: str) -> None:
    """A net namespace held only by a bind mount inside this process's private mount namespace."""
    unshare(CLONE_NEWNS)
    check(libc.mount(b"none", b"/", None, ctypes.c_ulong(MS_REC | MS_PRIVATE), None))

    def make() -> int:
        unshare(CLONE_NEWNET)
        return os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    fd = in_thread(make)
    net = os.fstat(fd).st_ino
    check(libc.mount(f"/proc/self/fd/{fd}".encode(), target.encode(), None, ctypes.c_ulong(MS_BIND), None))
    os.close(fd)
    ready(net=net, mnt=inode("/proc/self/ns/mnt"), path=target)


def map_self_as_root() -> None:
    """Map this process's own ids as root of its fresh user namespace: a nested user namespace can
    only be made by a process whose ids are mapped (the kernel answers EPERM otherwise)."""
    for name, text in (("setgroups", "deny"), ("uid_map", "0 0 1"), ("gid_map", "0 0 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)


def userns_chain() -> None:
    """user ns U1 (no process) -> U2 (a process): U1 is found only as U2's parent."""
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    r, w = os.pipe()
    if os.fork() == 0:
        try:
            unshare(CLONE_NEWUSER)
            map_self_as_root()
            u1 = inode("/proc/self/ns/user")
            if os.fork() == 0:
                unshare(CLONE_NEWUSER)
                os.write(w, json.dumps({"u1": u1, "u2": inode("/proc/self/ns/user"), "leaf": os.getpid()}).encode())
                os.close(w)
                signal.pause()
        finally:
            os._exit(0)  # the middle process (or a failed child) never returns into the caller
    os.close(w)
    info = json.loads(os.read(r, 4096) or b"{}")
    os.wait()  # the middle process exits: U1 now has no process
    if not info:
        sys.exit("userns-chain: the nested user namespace could not be made")
    ready(**info)


def owner_only_userns() -> int:
    """A user namespace known only as the owner of a net namespace that an fd holds."""
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        unshare(CLONE_NEWUSER | CLONE_NEWNET)
        os.write(w, b"x")
        signal.pause()
    os.read(r, 1)
    fd = os.open(f"/proc/{child}/ns/net", os.O_RDONLY)
    user = inode(f"/proc/{child}/ns/user")
    os.kill(child, signal.SIGKILL)
    os.waitpid(child, 0)
    ready(net=os.fstat(fd).st_ino, user=user, fd=fd)
    return fd


def state_of(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()[0]


def zombie_userns() -> None:
    """A user namespace that only a zombie pins: a child made it and exited; nobody reaps it."""
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            unshare(CLONE_NEWUSER)
            os.write(w, str(inode("/proc/self/ns/user")).encode())
        finally:
            os._exit(0)
    os.close(w)
    user = int(os.read(r, 64))
    while state_of(child) != "Z":
        time.sleep(0.01)
    ready(user=user, zombie=child)


def time_for_children() -> None:
    """A time namespace that only this process's future children will be in."""
    unshare(CLONE_NEWTIME)
    ready(time=inode("/proc/self/ns/time_for_children"), own=inode("/proc/self/ns/time"))


SHAPES = {
    "thread-uts": thread_uts, "fd-net": fd_net, "socket-net": socket_net, "private-bindmount": private_bindmount,
    "userns-chain": userns_chain, "owner-only-userns": owner_only_userns, "time-for-children": time_for_children,
    "zombie-userns": zombie_userns,
}

if __name__ == "__main__":
    keep = SHAPES[sys.argv[1]](*sys.argv[2:])
    while True:
        signal.pause()
