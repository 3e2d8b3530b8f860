"""Benchmark of the FUSE filesystem (issue 4): `find MOUNTPOINT | wc -l` and `ls -R` over 1,000 extra
namespaces, and `cat tasks` of a namespace with 1,000 processes. Run as root:

    .venv/bin/python bench/fs_bench.py [--namespaces 1000] [--processes 1000] [--runs 5]

It makes the namespaces and processes itself (and removes them), mounts namespacefs on a temporary
directory twice (default mode, where the kernel caches listings and names until a rescan changes
them, and --allow-other, where
every lookup of a namespace directory reaches the server because the answer depends on the
reader), and writes bench/RESULTS-fs.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: A process that makes N uts+ipc namespace pairs (held by open fds) and, in one more uts
#: namespace, PROCS processes; prints the inode of that uts namespace, then waits.
HOLDER = textwrap.dedent("""\
    import ctypes, os, resource, signal, sys, time
    libc = ctypes.CDLL(None, use_errno=True)
    CLONE_NEWUTS, CLONE_NEWIPC = 0x04000000, 0x08000000
    pairs, procs = int(sys.argv[1]), int(sys.argv[2])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(hard, 2 * pairs + 64), max(hard, 2 * pairs + 64)))
    fds = []
    for _ in range(pairs):
        if libc.unshare(CLONE_NEWUTS | CLONE_NEWIPC) != 0:
            raise OSError(ctypes.get_errno(), "unshare")
        fds += [os.open("/proc/self/ns/uts", os.O_RDONLY), os.open("/proc/self/ns/ipc", os.O_RDONLY)]
    libc.unshare(CLONE_NEWUTS)
    for _ in range(procs - 1):
        if os.fork() == 0:
            os.closerange(3, 2 * pairs + 64)
            signal.pause()
            os._exit(0)
    print(os.stat("/proc/self/ns/uts").st_ino, flush=True)
    signal.pause()
""")


def timed(argv: list[str] | str, runs: int, shell: bool = False) -> tuple[float, str]:
    """Median wall time of a command over `runs` warm runs (after one warm-up), and its output. Exit
    status is not checked: other activity on the host may remove a namespace in the middle of a walk."""
    out = subprocess.run(argv, shell=shell, capture_output=True, text=True, check=False).stdout
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        out = subprocess.run(argv, shell=shell, capture_output=True, text=True, check=False).stdout
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def read_time(path: Path, runs: int) -> float:
    """Median time of open+read+close of one file, in-process (no fork/exec of cat)."""
    times = []
    for _ in range(runs + 1):
        t = time.perf_counter()
        path.read_bytes()
        times.append(time.perf_counter() - t)
    return statistics.median(times[1:])


def mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


def measure(mnt: Path, uts: int, runs: int, extra: list[str]) -> dict[str, float | int]:
    db = str(mnt.parent / "names.db")  # a names database of its own, not the host's
    server = subprocess.Popen([sys.executable, "-m", "namespacefs", "mount", "--foreground", str(mnt), "--db", db, *extra],
                              start_new_session=True, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not mounted(mnt):
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("namespacefs did not mount")
            time.sleep(0.02)
        tasks = mnt / "uts" / str(uts) / "tasks"
        while not tasks.exists():
            time.sleep(0.05)
        find_s, find_out = timed(f"find {mnt} | wc -l", runs, shell=True)
        ls_s, _ = timed(["ls", "-R", str(mnt)], runs)
        cat_s, cat_out = timed(["cat", str(tasks)], runs)
        return {
            "entries": int(find_out.strip()), "find": find_s, "ls": ls_s, "cat": cat_s,
            "read": read_time(tasks, runs), "tasks": len(cat_out.split()),
            "namespaces": len(os.listdir(mnt / "uts")) + len(os.listdir(mnt / "ipc")),
        }
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def scan_time(runs: int) -> tuple[float, int, int]:
    """Median time of one discovery scan, and how many namespaces and processes the host has."""
    from namespacefs.discover import discover
    times, found = [], None
    for _ in range(runs):
        t = time.perf_counter()
        found = discover()
        times.append(time.perf_counter() - t)
    assert found is not None
    return statistics.median(times), len(found), len(found.processes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--namespaces", type=int, default=1000, help="extra namespaces to make (default 1000)")
    parser.add_argument("--processes", type=int, default=1000, help="processes in one namespace (default 1000)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--output", default=str(HERE / "RESULTS-fs.md"))
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("fs_bench.py: run as root", file=sys.stderr)
        return 1

    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(args.namespaces // 2), str(args.processes)],
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    results: dict[str, dict[str, float | int]] = {}
    try:
        assert holder.stdout is not None
        uts = int(holder.stdout.readline())
        scan, total, procs = scan_time(args.runs)
        with tempfile.TemporaryDirectory(prefix="nsfs-bench-") as tmp:
            mnt = Path(tmp) / "mnt"
            mnt.mkdir()
            cached = "default (the kernel caches listings and names; each rescan invalidates what it changed)"
            results[cached] = measure(mnt, uts, args.runs, [])
            filtered = "--allow-other (per-reader view: namespace entries not cached by the kernel)"
            results[filtered] = measure(mnt, uts, args.runs, ["--allow-other"])
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()

    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "?")
    lines = [
        "# namespacefs FUSE benchmark (bench/fs_bench.py)", "",
        f"Machine: {cpu}, {os.cpu_count()} CPUs, Linux {platform.release()}, Python {platform.python_version()}, "
        f"our FUSE session (fs.session). Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", "",
        f"Extra namespaces made for the run: {args.namespaces} (uts+ipc pairs held by fds), plus one uts namespace "
        f"with {args.processes} processes. The host then had {total} namespaces and {procs} processes in all "
        f"(load average {os.getloadavg()[0]:.2f} at the end). One discovery scan took "
        f"{scan * 1000:.0f} ms (median); the filesystem rescans in the background at most every 0.5 s.", "",
        f"Median of {args.runs} warm runs (after one warm-up run). Targets: find and ls -R under 1 s, cat tasks under 50 ms.", "",
        "| mode | namespaces shown (uts+ipc) | entries (find) | find MNT \\| wc -l | ls -R MNT | cat tasks (process) | "
        "read tasks (in-process) | pids in tasks |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mode, r in results.items():
        lines.append(f"| {mode} | {r['namespaces']} | {r['entries']} | {r['find'] * 1000:.0f} ms | {r['ls'] * 1000:.0f} ms | "
                     f"{r['cat'] * 1000:.1f} ms | {r['read'] * 1000:.2f} ms | {r['tasks']} |")
    text = "\n".join(lines) + "\n"
    Path(args.output).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
