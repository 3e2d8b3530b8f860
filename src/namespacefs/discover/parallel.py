"""Two readers for one scan: the process and a forked child take chunks of the pid list from a
shared queue until it is empty, each reads its processes through the per-process pipeline, and the
child sends what it found back (pickled) for the process to merge.

The scan is ~80% syscalls, which two processes make at the same time on two CPUs; two threads
cannot (the GIL serializes the Python between the syscalls). The queue is a pipe holding one
2-byte chunk number per chunk: a read of 2 bytes takes one, atomically, and the end of the pipe
is the end of the work, so whichever reader is faster (or less busy with `alongside` work) reads
more. Chunks shrink towards the end, so both readers finish at about the same time while few
namespace sets are split between them. A namespace both see is resolved (opened for its id, owner
and parent) by the one that claims it first, in a shared map (Scan.claim).
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import mmap
import os
import threading
from collections.abc import Callable, Iterable, Iterator

from namespacefs.discover.state import Scan
from namespacefs.forking import fork_and_act

#: Below this many processes one reader is faster: forking and merging cost more than they save.
PARALLEL_FROM = 150
_MIN_CHUNK = 8
#: 4 KiB of chunk numbers: what even the smallest pipe holds (one page, once a user is over
#: pipe-user-pages-soft), so filling the queue before anyone reads it never blocks
_MAX_CHUNKS = 2048
#: One byte per namespace, by inode modulo this: nsfs hands out inodes in sequence, so two live
#: namespaces share a slot only a million inodes apart (and then one is resolved after the merge)
_CLAIM_SLOTS = 1 << 20
_RESULT_PIPE_SIZE = 1 << 20  # the default pipe-max-size; a child's part of 1,000 processes is ~200 kB

ReadPart = Callable[[Scan, Iterable[int]], None]


def read(state: Scan, todo: list[int], read_part: ReadPart, alongside: Callable[[], object] | None = None) -> None:
    """read_part(state, pids) over every pid in todo, in two processes when that pays; in this
    process `alongside` runs first, while the child starts reading."""
    # a child of a threaded process could inherit a lock held by another thread: never fork there
    if len(todo) < PARALLEL_FROM or (os.cpu_count() or 1) < 2 or threading.active_count() > 1 or not _with_child(
            state, todo, read_part, alongside):
        if alongside is not None:
            alongside()
        read_part(state, todo)


def _with_child(state: Scan, todo: list[int], read_part: ReadPart, alongside: Callable[[], object] | None) -> bool:
    """The two-reader read; False (nothing read) if no child can be forked (at the process limit)."""
    bounds = chunks(len(todo))
    queue_r, queue_w = os.pipe()
    os.write(queue_w, b"".join(i.to_bytes(2, "little") for i in range(len(bounds))))
    os.close(queue_w)  # both readers see the end of the pipe once every chunk is taken
    result_r, result_w = os.pipe()
    with contextlib.suppress(OSError):  # room for the whole result: the child need not wait for us to read
        fcntl.fcntl(result_w, fcntl.F_SETPIPE_SZ, _RESULT_PIPE_SIZE)
    claims = state.claims = mmap.mmap(-1, _CLAIM_SLOTS)  # shared with the child: who resolves what
    gc.freeze()  # the collector then never walks (and so never copies) the pages both processes share
    try:
        child = fork_and_act(lambda: _child(state.proc, read_part, _take(queue_r, todo, bounds, []), claims,
                                            result_r, result_w))
    except OSError:
        gc.unfreeze()
        state.claims = None
        for fd in (queue_r, result_r, result_w):
            os.close(fd)
        return False
    os.close(result_w)
    import pickle  # here, not at the top: imported while the child reads, not before it starts

    mine: list[int] = []
    part = None
    try:
        if alongside is not None:
            alongside()
        read_part(state, _take(queue_r, todo, bounds, mine))
        with os.fdopen(result_r, "rb") as result:
            result_r = -1
            data = result.read()
        # unpickled before the wait, while the child unmaps its memory; a child that died part way
        # leaves a truncated stream
        with contextlib.suppress(pickle.UnpicklingError, EOFError):
            part = pickle.loads(data)
    finally:
        os.close(queue_r)
        if result_r >= 0:
            os.close(result_r)  # the child's write fails instead of blocking the wait below
        _, status = os.waitpid(child, 0)
        gc.unfreeze()
        state.claims = None  # from here on this process resolves whatever is left
        claims.close()
    if status == 0 and part is not None:
        state.merge(part)
    else:  # the child failed: what it took is read here
        taken = set(mine)
        read_part(state, [pid for i, (lo, hi) in enumerate(bounds) if i not in taken for pid in todo[lo:hi]])
    return True


def chunks(n: int) -> list[tuple[int, int]]:
    """[lo, hi) bounds covering range(n): each chunk a quarter of what is left for each of two
    readers (big first: fewer namespace sets split), never smaller than _MIN_CHUNK."""
    smallest = max(_MIN_CHUNK, -(-n // _MAX_CHUNKS))
    bounds = []
    lo = 0
    while lo < n:
        hi = min(n, lo + max(smallest, (n - lo) // 8))
        bounds.append((lo, hi))
        lo = hi
    return bounds


def _take(queue: int, todo: list[int], bounds: list[tuple[int, int]], taken: list[int]) -> Iterator[int]:
    while got := os.read(queue, 2):
        index = int.from_bytes(got, "little")
        taken.append(index)
        lo, hi = bounds[index]
        yield from todo[lo:hi]


def _child(proc: str, read_part: ReadPart, pids: Iterator[int], claims: mmap.mmap, result_r: int,
           result_w: int) -> None:
    """The forked reader (fork_and_act: it never returns into the caller, never flushes the parent's stdio)."""
    import pickle

    os.close(result_r)
    part = Scan(proc=proc)
    part.claims = claims
    read_part(part, pids)
    part.close_fds()
    with os.fdopen(result_w, "wb") as out:
        pickle.dump(part.portable(), out, protocol=pickle.HIGHEST_PROTOCOL)
