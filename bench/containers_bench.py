"""Benchmarks for containers and their operations (issue 5); writes bench/RESULTS-containers.md.

    .venv/bin/python bench/containers_bench.py [--procs 200] [--runs 10]

Measures, on real containers it starts (and removes) itself:
  - grouping a snapshot into the container tree (containers.find), next to the scan it needs;
  - `nsfs enter PID -- true` against util-linux `nsenter -t PID -a true`;
  - `nsfs kill` of a runc container (cgroup freezer) and of a bubblewrap sandbox (SIGSTOP each)
    holding --procs processes each.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from namespacefs import containers, core  # noqa: E402
from namespacefs.kernel import NS_TYPES  # noqa: E402
from namespacefs.ops import enter as ops_enter  # noqa: E402
from namespacefs.ops import kill as ops_kill  # noqa: E402
from runtimes import Started, start_bwrap, start_runc, stop, wait_for  # noqa: E402

NSFS = [sys.executable, "-m", "namespacefs"]


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, env=env)
    return time.perf_counter() - start


def count_in(pid: int) -> int:
    ns = os.stat(f"/proc/{pid}/ns/pid").st_ino
    n = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                n += os.stat(f"/proc/{entry}/ns/pid").st_ino == ns
    return n


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--procs", type=int, default=200)
    parser.add_argument("--runs", type=int, default=10)
    opts = parser.parse_args()
    rows: list[str] = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        box = Started()
        try:
            spawn = f"i=0; while [ $i -lt {opts.procs - 1} ]; do sleep 1000 & i=$((i+1)); done; exec sleep 1000"
            runc = start_runc(tmp, box, "bench", ["sh", "-c", spawn])
            wait_for(lambda: count_in(runc.pid) >= opts.procs, 30, "runc's processes")
            _, bw = start_bwrap(box, "benchbox", ["sh", "-c", spawn])
            wait_for(lambda: count_in(bw) >= opts.procs, 30, "bwrap's processes")
            env = dict(os.environ, NSFS_OCI_ROOTS=str(runc.state), NSFS_DB=str(tmp / "names.db"))

            scans, finds = [], []
            for _ in range(opts.runs):
                t0 = time.perf_counter()
                snap = core.snapshot(("process",))
                t1 = time.perf_counter()
                tree = containers.find(snap, oci_roots=[(str(runc.state), "runc")])
                finds.append(time.perf_counter() - t1)
                scans.append(t1 - t0)
            rows.append(f"| scan (`process` source) of {len(snap.processes)} processes | "
                        f"{statistics.median(scans) * 1000:.0f} ms |")
            rows.append(f"| `containers.find` into {len(tree)} containers (hostnames read) | "
                        f"{statistics.median(finds) * 1000:.0f} ms |")

            ours = [timed([*NSFS, "enter", str(runc.pid), "--", "true"], env) for _ in range(opts.runs)]
            theirs = [timed(["nsenter", "-t", str(runc.pid), "-a", "true"]) for _ in range(opts.runs)]
            rows.append(f"| `nsfs enter PID -- true` (whole command, scan included) | {statistics.median(ours) * 1000:.0f} ms |")
            rows.append(f"| `nsenter -t PID -a true` | {statistics.median(theirs) * 1000:.0f} ms |")

            plan = ops_enter.Plan(ops_enter.needed_types(runc.pid, NS_TYPES), runc.pid)
            inside = []
            for _ in range(opts.runs):
                t0 = time.perf_counter()
                ops_enter.run(plan, ["true"])
                inside.append(time.perf_counter() - t0)
            rows.append(f"| `ops.enter.run` alone (pidfd setns, fork, exec `true`) | {statistics.median(inside) * 1000:.1f} ms |")

            t = timed([*NSFS, "kill", f"/{runc.id}"], env)
            rows.append(f"| `nsfs kill` runc container, {opts.procs} processes, freezer cgroup (whole command) | "
                        f"{t * 1000:.0f} ms |")
            snap = core.snapshot(("process",))
            tree = containers.find(snap, hostnames=False)
            target = tree.lookup("benchbox")[0]
            t0 = time.perf_counter()
            report = ops_kill.kill(tree, target)
            t = time.perf_counter() - t0
            rows.append(f"| `ops.kill.kill` alone, bwrap sandbox, {len(report.pids)} processes, SIGSTOP each, "
                        f"until all reported gone | {t * 1000:.0f} ms |")
        finally:
            stop(box)
    with open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    startup = statistics.median(timed([*NSFS, "--help"]) for _ in range(opts.runs))
    rows.append(f"| `nsfs --help` (Python start-up, for comparison) | {startup * 1000:.0f} ms |")
    text = "\n".join([
        "# Containers benchmark (issue 5)", "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `bench/containers_bench.py "
        f"--procs {opts.procs} --runs {opts.runs}` (medians of {opts.runs} runs; kills are single runs).", "",
        f"Machine: Linux {platform.release()}, {os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}.",
        f"Load average {os.getloadavg()[0]:.2f} at the end of the run.", "",
        "| what | time |", "|---|---:|", *rows, "",
        "Whole-command times include Python start-up (the last row), a process scan of the host",
        "and the grouping; the rows marked `alone` time the operation itself, in-process.", "",
    ])
    (HERE / "RESULTS-containers.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
