"""What `-Q/--filter` adds to `nsfs ls` on a terminal, at 5,000 namespaces.

    .venv/bin/python bench/filter_bench.py [--namespaces 5000] [--repeat 15] [--out bench/RESULTS-filter.md]

The filter works on the rows of a snapshot after the scan, and the scan is the same with or without
it, so each run builds one synthetic snapshot of N namespaces (plain model objects: the kernel is
not asked) and times `nsfs ls`'s own part, `cli.ls.run()` with its scan replaced by that snapshot,
printing to a pseudo-terminal 120 columns wide (so the table is fitted to it, as on a real one).
Every run is a fresh interpreter, so the filter module's first import (and the compilation of the
expression) is counted. Reported: the median of each variant and what it adds to the plain
`nsfs ls` (a filter that keeps every row is the worst case: the same table plus the filter).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import pty
import statistics
import subprocess
import sys
import time
from pathlib import Path

FILTERS = {
    "none": None,
    "keeps every row: NS > 0": "NS > 0",
    'TYPE == "net" && NPROCS > 1': 'TYPE == "net" && NPROCS > 1',
    'NAME =~ "^web"': 'NAME =~ "^web"',
}

CHILD = r"""
import argparse, io, os, sys, time
from namespacefs.kernel import NS_TYPES
from namespacefs.model import Holder, Namespace, Process, Snapshot
n, expr, report = int(sys.argv[1]), sys.argv[2] or None, int(sys.argv[3])
procs, spaces = {}, {}
for i in range(n):
    pid = 1000 + i // 2
    if pid not in procs:
        procs[pid] = Process(pid, 1, "sleep", ("sleep", "1000", f"w{i}"), 0, 0, (pid,), 1, {})
    t = NS_TYPES[i % len(NS_TYPES)]
    inode = 4026540000 + i
    members = (pid,) if i % 3 else (pid, pid + 1)
    name = f"web-{i}" if i % 10 == 0 else f"{t}-{i:06x}"
    spaces[inode] = Namespace(t, inode, 10 + i, 4, 4026531837, None, tuple(Holder("process", pid=p) for p in members),
                              members, name=name, path="/" + name)
for p in list(procs):
    procs[p] = procs[p]._replace(namespaces={"mnt": 0})
snap = Snapshot("boot", "6.18", 0.0, 0.0, spaces, procs)
import namespacefs.cli.ls as ls
from namespacefs.cli import main  # noqa: F401  (what `nsfs` has imported before ls runs)
ls.take_snapshot = lambda args: snap
parser = argparse.ArgumentParser()
ls.add_arguments(parser, "ls")
args = parser.parse_args(["-Q", expr] if expr else [])
args.command = "ls"
start = time.perf_counter()
ls.run(args)
sys.stdout.flush()
took = time.perf_counter() - start
alone = 0.0
if expr:  # the filter by itself: compiling it and testing every row (the fastest of 5)
    rows = [ls.Row(ns, snap) for ns in ls.select(snap, args)]
    alone = 1.0
    for _ in range(5):
        t = time.perf_counter()
        keep = ls._compile_filter(expr)
        kept = [r for r in rows if keep(r)]
        alone = min(alone, time.perf_counter() - t)
os.write(report, f"{took} {alone}\n".encode())
"""


def one_run(n: int, expr: str | None) -> tuple[float, float]:
    leader, follower = pty.openpty()
    r, w = os.pipe()
    env = {**os.environ, "COLUMNS": "120", "NSFS_NO_DAEMON": "1"}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(n), expr or "", str(w)], stdout=follower,
                            stderr=subprocess.DEVNULL, pass_fds=(w,), env=env)
    os.close(follower)
    os.close(w)
    while True:  # drain the terminal so the child never blocks on it
        try:
            if not os.read(leader, 1 << 16):
                break
        except OSError:
            break
    os.close(leader)
    assert proc.wait() == 0, "the benchmark child failed"
    with os.fdopen(r) as f:
        took, alone = f.read().split()
    return float(took), float(alone)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--namespaces", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--out", type=Path, help="write the results table here (Markdown)")
    opts = ap.parse_args()
    times: dict[str, list[float]] = {k: [] for k in FILTERS}
    alone: dict[str, list[float]] = {k: [] for k in FILTERS}
    for _ in range(opts.repeat):  # interleaved, so a load spike hits every variant alike
        for label, expr in FILTERS.items():
            took, by_itself = one_run(opts.namespaces, expr)
            times[label].append(took)
            alone[label].append(by_itself)
    base, fastest = statistics.median(times["none"]), min(times["none"])
    load = os.getloadavg()
    lines = [
        "# `-Q/--filter` benchmark (issue 14)",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `bench/filter_bench.py "
        f"--namespaces {opts.namespaces} --repeat {opts.repeat}`.",
        "",
        f"Machine: Linux {platform.release()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}. Medians of fresh interpreters; "
        "`nsfs ls` on a 120-column pty, the scan replaced by a synthetic snapshot (see the docstring).",
        "",
        "| filter | median | fastest | added to plain `nsfs ls` (median; fastest) | the filter alone (compile + every row) |",
        "|---|---|---|---|---|",
    ]
    for label, values in times.items():
        med, low = statistics.median(values), min(values)
        added = "—" if label == "none" else f"{(med - base) * 1000:+.1f} ms; {(low - fastest) * 1000:+.1f} ms"
        by_itself = "—" if label == "none" else f"{statistics.median(alone[label]) * 1000:.2f} ms"
        lines.append(f"| {label} | {med * 1000:.1f} ms (spread {(max(values) - low) * 1000:.1f}) | {low * 1000:.1f} ms "
                     f"| {added} | {by_itself} |")
    text = "\n".join(lines) + "\n"
    print(text)
    print(json.dumps({k: statistics.median(v) for k, v in times.items()}))
    if opts.out:
        opts.out.write_text(text)


if __name__ == "__main__":
    main()
