"""The live model's compiled event readers (namespacefs._events): the proc connector's datagrams
and the perf rings of the syscall tracepoints. Real events from the kernel where the kernel makes
them; crafted datagrams and rings for what it does not (truncated, corrupt, wrapped around); random
bytes for the rest (Hypothesis); and the whole module under valgrind and AddressSanitizer."""

from __future__ import annotations

import errno
import os
import socket
import struct
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compiled import asan_run, valgrind_errors
from namespacefs import _events, kernel

SOURCE = Path(__file__).resolve().parent.parent / "src" / "namespacefs" / "_events.c"
FORK, EXEC, EXIT = 0x1, 0x2, 0x80000000  # enum what, linux/cn_proc.h
NLMSG_DONE, CN_IDX_PROC = 3, 1
PAGE = 4096  # the control page of a crafted ring (struct perf_event_mmap_page)
DATA_HEAD, DATA_TAIL = 1024, 1032
RECORD_LOST, RECORD_SAMPLE = 2, 9


def datagram(what: int, ids: tuple[int, int, int, int], idx: int = CN_IDX_PROC, kind: int = NLMSG_DONE) -> bytes:
    """One proc connector message as the kernel sends it: nlmsghdr, cn_msg, proc_event (what,
    cpu, timestamp, the event's ids, the rest of the union)."""
    event = struct.pack("=IIQ4I", what, 0, 123, *ids) + bytes(24)
    cn = struct.pack("=IIIIHH", idx, 1, 0, 0, len(event), 0) + event
    return struct.pack("=IHHII", 16 + len(cn), kind, 0, 0, 0) + cn


def sent(*datagrams: bytes, limit: int = 64) -> tuple[list[int], tuple[int, int, int, int], int, int, bool]:
    """proc_events over a datagram socket these were sent to (what the kernel's socket is like)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with ours, theirs:
        for d in datagrams:
            theirs.send(d)
        return _events.proc_events(ours.fileno(), limit)


def test_forks_execs_exits_and_threads_are_read_as_the_processes_to_reread() -> None:
    got = sent(datagram(FORK, (1, 1, 500, 500)), datagram(FORK, (500, 500, 501, 500)),
               datagram(EXEC, (500, 500, 0, 0)), datagram(EXIT, (501, 500, 0, 0)), datagram(EXIT, (500, 500, 0, 0)))
    pids, counts, overruns, err, drained = got
    # a new thread (501 of 500) names its process; a thread's exit is left out
    assert pids == [500, 500, 500, 500] and counts == (1, 1, 1, 1) and (overruns, err, drained) == (0, 0, True)


def test_what_is_not_a_whole_proc_event_is_left_out_and_the_limit_holds() -> None:
    whole = datagram(FORK, (1, 1, 7, 7))
    pids, counts, _overruns, _err, drained = sent(
        whole[:40], datagram(FORK, (1, 1, 8, 8), idx=5), datagram(FORK, (1, 1, 9, 9), kind=2),
        struct.pack("=IHHII", 4000, NLMSG_DONE, 0, 0, 0) + whole[16:], whole + whole[:20], b"", whole)
    assert pids == [7, 7] and counts == (2, 0, 0, 0) and drained
    pids, _counts, _overruns, _err, drained = sent(whole, whole, whole, limit=2)
    assert pids == [7, 7] and not drained  # (the third is left for the next drain)


def test_an_fd_that_is_no_socket_is_an_errno_not_an_exception() -> None:
    r, w = os.pipe()
    try:
        pids, _counts, _overruns, err, drained = _events.proc_events(r, 4)
        assert (pids, err, drained) == ([], errno.ENOTSOCK, False)
    finally:
        os.close(r)
        os.close(w)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=8))
def test_random_datagrams_never_crash_the_reader(datagrams: list[bytes]) -> None:
    pids, counts, _overruns, err, drained = sent(*datagrams)
    assert err == 0 and drained and len(pids) == sum(counts) and all(p > 0 for p in pids)


def test_real_events_from_the_kernel(tmp_path: Path) -> None:
    """A fork, its thread, its exec and its exit, read from the kernel's proc connector."""
    try:
        sock = kernel.proc_connector_open(1 << 20)
    except OSError as e:
        pytest.skip(f"no proc connector: {e}")
    with sock:
        pid = os.fork()
        if pid == 0:
            try:
                t = threading.Thread(target=time.sleep, args=(0.05,))
                t.start()
                t.join()
                os.execv("/bin/true", ["true"])
            finally:
                os._exit(1)
        os.waitpid(pid, 0)
        time.sleep(0.1)
        pids, counts, overruns, err, _drained = _events.proc_events(sock.fileno(), 10_000)
    assert (overruns, err) == (0, 0)
    assert pids.count(pid) >= 4, (pid, pids)  # fork, the thread's fork, exec, exit
    assert counts[0] >= 1 and counts[1] >= 1 and counts[2] >= 1 and counts[3] >= 1, counts


def ring(records: list[bytes], start: int = 0, size: int = 256) -> bytearray:
    """A crafted perf ring: the control page, then `size` bytes of data holding these records from
    the free-running position `start` on (wrapping around), data_tail at start, data_head after them."""
    buf = bytearray(PAGE + size)
    position = start
    for r in records:
        for i, b in enumerate(r):
            buf[PAGE + (position + i) % size] = b
        position += len(r)
    struct.pack_into("=QQ", buf, DATA_HEAD, position, start)
    return buf


def sample_record(pid: int, tid: int, common_type: int, ret: int) -> bytes:
    """PERF_RECORD_SAMPLE of PERF_SAMPLE_TID | PERF_SAMPLE_RAW over a sys_exit_* tracepoint: pid,
    tid, the raw size, then common_type, flags, preempt_count, common_pid, nr (+ padding), ret."""
    raw = struct.pack("=HBBiiiq", common_type, 0, 0, pid, 272, 0, ret) + bytes(4)
    body = struct.pack("=III", pid, tid, len(raw)) + raw
    return struct.pack("=IHH", RECORD_SAMPLE, 0, 8 + len(body)) + body


def test_samples_and_lost_records_are_read_across_the_wrap_and_their_space_freed() -> None:
    records = [sample_record(10, 11, 700, 0), struct.pack("=IHHQQ", RECORD_LOST, 0, 24, 1, 5),
               sample_record(12, 12, 701, 3)]
    buf = ring(records, start=200)  # (200 of 256: the first record wraps around)
    samples, lost = _events.perf_records(buf, PAGE, 256)
    assert samples == [(10, 11, 700, 0), (12, 12, 701, 3)] and lost == 5
    head, tail = struct.unpack_from("=QQ", buf, DATA_HEAD)
    assert tail == head
    assert _events.perf_records(buf, PAGE, 256) == ([], 0)  # (read once)


def test_a_corrupt_record_ends_the_read_and_the_rest_is_dropped() -> None:
    buf = ring([sample_record(10, 10, 700, 0), struct.pack("=IHH", RECORD_SAMPLE, 0, 3), sample_record(11, 11, 700, 0)])
    samples, _lost = _events.perf_records(buf, PAGE, 256)
    head, tail = struct.unpack_from("=QQ", buf, DATA_HEAD)
    assert samples == [(10, 10, 700, 0)] and tail == head
    with pytest.raises(ValueError):
        _events.perf_records(bytearray(PAGE), PAGE, 256)  # (no data area in it)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512), st.integers(0, 1 << 20), st.integers(0, 600))
def test_random_rings_never_crash_the_reader(data: bytes, start: int, length: int) -> None:
    buf = bytearray(PAGE + 256)
    buf[PAGE:PAGE + min(256, len(data))] = data[:256]
    struct.pack_into("=QQ", buf, DATA_HEAD, start + length, start)
    _samples, _lost = _events.perf_records(buf, PAGE, 256)
    assert struct.unpack_from("=QQ", buf, DATA_HEAD)[1] == start + length


#: The module's calls on crafted and random input, for valgrind and AddressSanitizer.
RUN = r"""
import os, random, socket, struct, sys
sys.path.insert(0, sys.argv[1])
import _events
random.seed(7)
ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
event = struct.pack("=IIQ4I", 1, 0, 1, 1, 1, 9, 9) + bytes(24)
cn = struct.pack("=IIIIHH", 1, 1, 0, 0, len(event), 0) + event
whole = struct.pack("=IHHII", 16 + len(cn), 3, 0, 0, 0) + cn
total = 0
for i in range(400):
    theirs.send(random.choice([whole, whole[:random.randrange(len(whole))], os.urandom(random.randrange(300)), whole * 3]))
    total += len(_events.proc_events(ours.fileno(), 8)[0])
for i in range(400):
    buf = bytearray(4096 + 256)
    buf[4096:] = os.urandom(256)
    start = random.randrange(1 << 20)
    struct.pack_into("=QQ", buf, 1024, start + random.randrange(600), start)
    total += len(_events.perf_records(buf, 4096, 256)[0])
print("ok", total)
"""


def test_the_readers_run_clean_under_valgrind(tmp_path: Path) -> None:
    out, errors = valgrind_errors(SOURCE, tmp_path, RUN)
    assert out.startswith("ok"), out
    assert errors == [], errors


def test_the_readers_run_clean_under_address_sanitizer(tmp_path: Path) -> None:
    assert asan_run(SOURCE, tmp_path, RUN).startswith("ok")
