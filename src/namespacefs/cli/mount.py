"""`nsfs mount [MOUNTPOINT]` and `nsfs umount [MOUNTPOINT]`: the FUSE filesystem (docs/fs.md)."""

from __future__ import annotations

import argparse
import logging
import os
import select
import stat
import subprocess
import sys
import time
from collections.abc import Iterator

from namespacefs.cli import UserError, whole
from namespacefs.cli.common import add_source_options, chosen_sources
from namespacefs.fs.mounting import DEFAULT_MOUNTPOINT, MountError, absolute

#: These commands run until stopped: the cyclic collector stays on (see cli.main).
KEEPS_RUNNING = True

#: How long `nsfs mount` waits for the background server to report that it has mounted.
READY_TIMEOUT = 30.0


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("mountpoint", nargs="?", default=DEFAULT_MOUNTPOINT,
                        help=f"where to mount (default {DEFAULT_MOUNTPOINT}; created if missing)")
    if command == "umount":
        parser.add_argument("-l", "--lazy", action="store_true", help="detach now even if busy (umount -l)")
        return
    parser.add_argument("-f", "--foreground", action="store_true", help="serve in the foreground (stop with Ctrl-C)")
    parser.add_argument("--allow-other", action="store_true",
                        help="let every user read it; each reader sees only its own user namespace's subtree")
    parser.add_argument("--db", metavar="PATH", help="the names database (default: the naming core's own)")
    parser.add_argument("-d", "--debug", action="store_true", help="log every FUSE request (with --foreground)")
    # internal: background start-up
    parser.add_argument("--ready-fd", type=whole("--ready-fd", 0, 2**31 - 1), help=argparse.SUPPRESS)
    add_source_options(parser)


def run(args: argparse.Namespace) -> int:
    # an empty path would be the working directory (abspath('')): never mount over it by accident
    if not args.mountpoint.strip():
        raise UserError("the mountpoint is empty (give a directory, or leave it out for the default)")
    if args.command == "umount":
        return _umount(args)
    if args.db is not None and not args.db.strip():
        raise UserError("the names database path is empty (give --db a file name)")
    if os.geteuid() != 0:
        raise UserError("mounting namespacefs needs root (it reads every process's namespaces)")
    sources = chosen_sources(args.sources) if args.sources else None
    if not args.foreground and args.ready_fd is None:
        return _background(args)
    return _foreground(args, sources)


def _foreground(args: argparse.Namespace, sources: tuple[str, ...] | None) -> int:
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="nsfs mount: %(message)s")
    report = None
    if args.ready_fd is not None:
        try:
            if not stat.S_ISFIFO(os.fstat(args.ready_fd).st_mode):
                raise UserError(f"--ready-fd {args.ready_fd} is not a pipe")
        except OSError as e:
            raise UserError(f"--ready-fd {args.ready_fd}: {e.strerror}") from None
        report = os.fdopen(args.ready_fd, "w", buffering=1)

    def say(message: str) -> None:
        if report is not None:
            report.write(f"note {message}\n")
        else:
            print(f"nsfs mount: {message}", file=sys.stderr)

    def ready(mountpoint: str) -> None:
        if report is not None:
            report.write(f"ready {mountpoint}\n")
            report.close()
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            os.close(devnull)
        else:
            print(f"nsfs mount: serving {mountpoint} (Ctrl-C or nsfs umount to stop)", file=sys.stderr)

    from namespacefs.fs import serve  # pyfuse3 is loaded only by the commands that need it
    try:
        serve(args.mountpoint, allow_other=args.allow_other, db=args.db, sources=sources,
              debug=args.debug, ready=ready, say=say)
    except MountError as e:
        if report is not None and not report.closed:
            report.write(f"error {e}\n")
            return 1
        raise UserError(str(e)) from None
    return 0


def _background(args: argparse.Namespace) -> int:
    """Start the server as a detached process and wait until it has mounted (or failed)."""
    argv = [sys.executable, "-m", "namespacefs", "mount", absolute(args.mountpoint)]
    if args.allow_other:
        argv.append("--allow-other")
    if args.db:
        argv += ["--db", os.path.abspath(args.db)]
    if args.sources:
        argv += ["--sources", args.sources]
    read_end, write_end = os.pipe()
    argv += ["--ready-fd", str(write_end)]
    try:
        server = subprocess.Popen(argv, pass_fds=(write_end,), start_new_session=True,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    finally:
        os.close(write_end)
    try:
        for line in _reports(read_end, time.monotonic() + READY_TIMEOUT):
            kind, _, text = line.partition(" ")
            if kind == "note":
                print(f"nsfs mount: {text}", file=sys.stderr)
            elif kind == "ready":
                print(f"nsfs mount: namespacefs mounted at {text} (server pid {server.pid})", file=sys.stderr)
                if server.stderr:
                    server.stderr.close()
                return 0
            elif kind == "error":
                server.wait(timeout=10)
                raise UserError(text)
    finally:
        os.close(read_end)
    if server.poll() is None:  # no word within READY_TIMEOUT: stop the server we started
        server.terminate()
        raise UserError(f"the filesystem server did not mount within {READY_TIMEOUT:.0f} s (stopped it)")
    status = server.wait(timeout=10)
    problem = server.stderr.read().decode(errors="replace").strip() if server.stderr else ""
    raise UserError(f"the filesystem server stopped before mounting (status {status}){': ' + problem if problem else ''}")


def _reports(fd: int, deadline: float) -> Iterator[str]:
    """The lines the background server reports on fd, until it closes it or the deadline passes
    (select with a timeout, reading raw bytes: a server that hangs before its first report must
    not hang `nsfs mount` too, and no line may sit unseen in a read buffer)."""
    pending = b""
    while select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
        chunk = os.read(fd, 4096)
        if not chunk:
            return  # the server closed the pipe: it stopped
        pending += chunk
        *lines, pending = pending.split(b"\n")
        yield from (line.decode(errors="replace") for line in lines)


def _umount(args: argparse.Namespace) -> int:
    from namespacefs.fs import unmount
    try:
        unmount(args.mountpoint, lazy=args.lazy)
    except MountError as e:
        raise UserError(str(e)) from None
    return 0
