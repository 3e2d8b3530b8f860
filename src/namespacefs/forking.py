"""The one way namespacefs forks: a child that acts and then exits, and can never return.

A forked child shares the parent's whole Python state: its stack, open files, buffered stdout, the
CLI's error boundary, atexit handlers. A child that has joined another process's namespaces (enter,
accounting, shift's transient user namespace) and then *returns* would run the rest of the CLI in
there: print a second answer, flush the parent's buffers twice, or act on the wrong host. So every
fork site calls fork_and_act(), whose child leaves through os._exit() in a `finally`, whatever
act() does: returns, raises, calls sys.exit(), is interrupted, or fails while reporting.
"""

from __future__ import annotations

import os
from collections.abc import Callable

#: The child's exit status when act() raised (act reports its own errors: a pipe, a status byte).
FAILED = 1


def fork_and_act(act: Callable[[], int | None]) -> int:
    """Fork. In the parent: the child's pid (OSError if no child can be made). In the child: run
    act() and exit with the status it returns (None is 0, an exception FAILED), never returning."""
    pid = os.fork()
    if pid != 0:
        return pid
    status = FAILED
    try:  # pragma: no cover - runs in the child
        result = act()
        status = result if isinstance(result, int) and 0 <= result <= 255 else 0 if result is None else FAILED
    except BaseException:  # pragma: no cover
        status = FAILED
    finally:
        os._exit(status)  # pragma: no cover


def output_of(pid: int, r: int) -> tuple[bytes, int]:
    """Everything a child wrote to the read end r of its pipe (closed here), and its wait status,
    once it has exited and been reaped."""
    chunks = []
    try:
        while chunk := os.read(r, 65536):
            chunks.append(chunk)
    finally:
        os.close(r)
        status = os.waitpid(pid, 0)[1]  # (EINTR is retried by Python, PEP 475)
    return b"".join(chunks), status
