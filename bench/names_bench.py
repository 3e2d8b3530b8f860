"""Benchmark: what naming costs a snapshot and `nsfs ls` (issue 3).

Measured on the namespaces the host has right now (plus --extra uts namespaces this script makes
in a process group of its own, killed on exit):

  in-process, median of --repeat: discover(); core.name() with no database file; with a database
  holding --renames renames of live namespaces (and as many dead ones from an earlier boot already
  in the history); and the parts: container engine names, assign(), paths().
  cold `nsfs ls` (a fresh process per run, alternated): with names as shipped (no database file /
  the populated database) and with naming switched off (core.name replaced by the identity).

Writes bench/RESULTS-names.md unless --no-write.

    .venv/bin/python bench/names_bench.py [--extra 200] [--renames 500] [--repeat 7] [--no-write]
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
import time
from collections.abc import Callable
from pathlib import Path

from namespacefs import core, names
from namespacefs.discover import discover
from namespacefs.model import Snapshot
from namespacefs.names import defaults, store

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "NSFS_NO_DAEMON": "1"}
NO_NAMES = ("import sys, namespacefs.core as c; c.name = lambda s, db=None, strict=False: s; "
            "from namespacefs.cli import main; sys.exit(main(sys.argv[1:]))")


def median_time(func: Callable[[], object], repeat: int) -> tuple[float, float]:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        func()
        times.append(time.perf_counter() - t)
    return statistics.median(times), max(times) - min(times)


def scan() -> Snapshot:
    for _ in range(3):
        try:
            return discover()
        except OSError:
            continue  # a process died mid-scan in a way discovery does not count yet
    return discover()


def populate(db: str, snap: Snapshot, count: int) -> int:
    """Store `count` renames of live namespaces (and `count` of an earlier boot, in the history)."""
    conn = names.open_db(db)
    live = sorted(snap, key=lambda ns: ns.inode)[:count]
    now = time.time()
    with store.transaction(conn):
        for i, ns in enumerate(live):
            conn.execute("INSERT INTO names VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (snap.boot_id, defaults.ns_key(ns), ns.type, ns.id, ns.inode, ns.dev,
                          defaults.scope_key(ns, snap), f"bench-{i}", now, now))
        for i in range(count):
            conn.execute("INSERT INTO history (name, type, ns_id, inode, dev, boot_id, scope, first_seen, last_seen,"
                         " ended, reason) VALUES (?, 'net', ?, ?, 4, 'old-boot', '', ?, ?, ?, 'reboot')",
                         (f"old-{i}", i, i, now, now, now))
    conn.close()
    return len(live)


def in_process(snap: Snapshot, empty_db: str, full_db: str, renamed: int, r: int) -> tuple[list[tuple[str, str]], float]:
    """The in-process rows of the table, and discover()'s median time."""
    rows: list[tuple[str, str]] = []
    d, ds = median_time(scan, r)
    rows.append(("discover()", f"{d * 1000:.1f} ms (spread {ds * 1000:.1f})"))
    for label, db in (("core.name(), no database file", empty_db), (f"core.name(), {renamed} renames", full_db)):
        t, s = median_time(lambda db=db: core.name(snap, db), r)
        rows.append((label, f"{t * 1000:.1f} ms (spread {s * 1000:.1f}) = {100 * t / d:.1f}% of discover()"))
    e, _ = median_time(lambda: core.engine_names(snap), r)
    rows.append(("  of which container engine names", f"{e * 1000:.1f} ms"))
    engine = core.engine_names(snap)
    conn = names.open_db(full_db)
    stored = store.rows(conn, snap.boot_id)
    conn.close()
    a, _ = median_time(lambda: defaults.assign(snap, stored, engine), r)
    rows.append(("  of which assign()", f"{a * 1000:.1f} ms"))
    got = defaults.assign(snap, stored, engine)
    p, _ = median_time(lambda: defaults.paths(snap, got), r)
    rows.append(("  of which paths()", f"{p * 1000:.1f} ms"))
    q, _ = median_time(lambda: store.rows(names.open_db(full_db), snap.boot_id), r)
    rows.append(("  of which the database read (open + one SELECT)", f"{q * 1000:.1f} ms"))
    return rows, d


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--extra", type=int, default=200)
    ap.add_argument("--renames", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    group = subprocess.Popen(["sh", "-c", f"for i in $(seq {args.extra}); do unshare --uts sleep 3600 & done; wait"],
                             start_new_session=True)
    tmp = tempfile.mkdtemp(prefix="nsfs-names-bench-")
    try:
        time.sleep(1.0 + args.extra / 200)
        snap = scan()
        empty_db, full_db = os.path.join(tmp, "none.db"), os.path.join(tmp, "names.db")
        renamed = populate(full_db, snap, args.renames)
        rows, _discover = in_process(snap, empty_db, full_db, renamed, args.repeat)
        r = args.repeat
        runs: dict[str, list[float]] = {"nsfs ls, naming off": [], "nsfs ls, no database file": [],
                                        f"nsfs ls, {renamed} renames": []}
        cmds = {
            "nsfs ls, naming off": [sys.executable, "-c", NO_NAMES, "ls", "--db", empty_db],
            "nsfs ls, no database file": [sys.executable, "-m", "namespacefs", "ls", "--db", empty_db],
            f"nsfs ls, {renamed} renames": [sys.executable, "-m", "namespacefs", "ls", "--db", full_db],
        }
        for cmd in cmds.values():  # warm-up
            subprocess.run(cmd, env=ENV, capture_output=True, check=False)
        for _ in range(r):
            for label, cmd in cmds.items():
                for _attempt in range(3):  # (a process dying mid-scan can still fail a scan: not counted)
                    t = time.perf_counter()
                    if subprocess.run(cmd, env=ENV, capture_output=True, check=False).returncode == 0:
                        runs[label].append(time.perf_counter() - t)
                        break
        base = statistics.median(runs["nsfs ls, naming off"])
        for label, times in runs.items():
            m = statistics.median(times)
            rows.append((f"cold {label}", f"{m * 1000:.0f} ms (spread {(max(times) - min(times)) * 1000:.0f})"
                                          f" = {100 * (m - base) / base:+.1f}%"))
        imports = subprocess.run([sys.executable, "-X", "importtime", "-m", "namespacefs", "ls", "--db", empty_db],
                                 env=ENV, capture_output=True, text=True, check=False).stderr
        for module in ("namespacefs.names", "namespacefs.names.store", "namespacefs.containers"):
            for line in imports.splitlines():
                parts = [p.strip() for p in line.split("|")]
                if len(parts) == 3 and parts[2] == module:
                    rows.append((f"import of {module} in `nsfs ls` (cumulative)", f"{int(parts[1]) / 1000:.1f} ms"))
    finally:
        os.killpg(group.pid, signal.SIGKILL)
        group.wait()
        for f in os.listdir(tmp):
            os.unlink(os.path.join(tmp, f))
        os.rmdir(tmp)

    report = [
        "# Naming benchmark (issue 3)", "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `bench/names_bench.py --extra {args.extra}"
        f" --renames {args.renames} --repeat {args.repeat}`.", "",
        f"Machine: Linux {platform.release()}, {os.cpu_count()} CPUs, Python {platform.python_version()}. The host"
        f" had {len(snap)} namespaces ({len(snap.processes)} processes) at the time; load average"
        f" {os.getloadavg()[0]:.2f} (numbers are medians; the spread is max - min).", "",
        "| what | time |", "|---|---|",
        *[f"| {k} | {v} |" for k, v in rows], "",
    ]
    text = "\n".join(report)
    print(text)
    if not args.no_write:
        (ROOT / "bench" / "RESULTS-names.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
