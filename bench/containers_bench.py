"""Benchmarks for containers and their operations (issue 5); writes bench/RESULTS-containers.md.

    .venv/bin/python bench/containers_bench.py [--procs 200] [--runs 10]

Measures, on real containers it starts (and removes) itself:
  - grouping a snapshot into the container tree (containers.find), next to the scan it needs;
  - `nsfs enter PID -- true` against util-linux `nsenter -t PID -a true`;
  - `nsfs kill` of a runc container (cgroup freezer) and of a bubblewrap sandbox (SIGSTOP each)
    holding --procs processes each.

    .venv/bin/python bench/containers_bench.py --engines 50 [--runs 20] [--profile]

instead measures what recognising container engines adds to `nsfs ls` (issue 12) on a host with
50 containers; writes bench/RESULTS-engines.md. It starts its own dockerd and podman (as the tests
do: own data-root, exec-root, socket, store; a busybox image imported, never pulled) and runs a
third Docker, a third Podman (two pods), a third plain runc containers; then times, in-process and
on one snapshot (without the containers of others on a shared machine), what `nsfs ls` runs for
the names of namespaces (containers.engine_names: the tree without hostnames) with the engines
recognised and with every engine switched off. Everything it started is removed at the end.
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
from namespacefs.containers import engines  # noqa: E402
from namespacefs.kernel import NS_TYPES  # noqa: E402
from namespacefs.model import Snapshot  # noqa: E402
from namespacefs.ops import enter as ops_enter  # noqa: E402
from namespacefs.ops import kill as ops_kill  # noqa: E402
from runtimes import IMAGE, Dockerd, Podman, Started, busybox_tar, start_bwrap, start_runc, stop, wait_for  # noqa: E402

NSFS = [sys.executable, "-m", "namespacefs"]


def median_ms(func, runs: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        func()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def only_ours(snap: Snapshot, roots: list[tuple[str, str]]) -> Snapshot:
    """The snapshot without the containers of others on a shared machine (their processes and the
    namespaces only they are in): the host and the containers this benchmark started."""
    tree = containers.find(snap, oci_roots=roots, hostnames=False)
    keep = set(tree.root.pids)
    for c in tree:
        if c.engine not in ("host", "unknown"):
            keep.update(c.all_pids)
    processes = {pid: p for pid, p in snap.processes.items() if pid in keep}
    used = {i for p in processes.values() for i in p.namespaces.values()}
    namespaces = {i: ns for i, ns in snap.namespaces.items() if i in used or not ns.processes}
    return snap.replace(processes=processes, namespaces=namespaces)


def engines_main(opts: argparse.Namespace) -> int:
    """--engines N: what recognising engines adds to `nsfs ls` with N containers; writes
    bench/RESULTS-engines.md."""
    third = max(1, opts.engines // 3)
    with tempfile.TemporaryDirectory(prefix="nsfs-engines-") as tmpdir:
        tmp = Path(tmpdir)
        d, p, box = Dockerd(tmp / "docker"), Podman(tmp / "podman"), Started()
        d.dir.mkdir()
        p.dir.mkdir()
        try:
            assert d.start() is None, "dockerd did not start"
            tar = busybox_tar(tmp)
            d.docker("import", str(tar), IMAGE)
            assert p.start(tar) is None, "podman cannot run here"
            for i in range(third):
                d.docker("run", "-d", "--name", f"d{i}", "--network", "none", IMAGE, "sleep", "100000")
            p.podman("pod", "create", "--name", "pod-a", "--network", "none")
            p.podman("pod", "create", "--name", "pod-b", "--network", "none")
            for i in range(third):
                pod = ["--pod", ("pod-a", "pod-b")[i % 2]] if i < 4 else ["--network", "none"]
                p.podman("run", "-d", "--name", f"p{i}", *pod, f"localhost/{IMAGE}", "sleep", "100000")
            runcs = opts.engines - 2 * third
            for i in range(runcs):
                start_runc(tmp, box, f"r{i}", ["sleep", "100000"])
            roots = [(str(tmp / "runc-state"), "runc")]
            snap = only_ours(core.snapshot(("process",)), roots)
            tree = containers.find(snap, oci_roots=roots, hostnames=False)
            recognised = sum(1 for c in tree if c.engine not in ("host", "unknown"))
            with_engines = median_ms(lambda: containers.engine_names(
                snap, containers.find(snap, oci_roots=roots, hostnames=False)), opts.runs)
            if opts.profile:
                import cProfile
                import pstats

                prof = cProfile.Profile()
                prof.enable()
                containers.engine_names(snap, containers.find(snap, oci_roots=roots, hostnames=False))
                prof.disable()
                pstats.Stats(prof).sort_stats("cumtime").print_stats(25)
            parts = {part: median_ms(lambda part=part: getattr(engines.World(snap, roots), part), opts.runs)
                     for part in ("states", "docker", "podman", "pauses")}
            identify = engines.World.identify
            engines.World.identify = lambda self, c: None  # type: ignore[method-assign,assignment,return-value]
            try:
                without = median_ms(lambda: containers.engine_names(
                    snap, containers.find(snap, oci_roots=roots, hostnames=False)), opts.runs)
            finally:
                engines.World.identify = identify  # type: ignore[method-assign]
            env = dict(os.environ, NSFS_OCI_ROOTS=roots[0][0], NSFS_NO_DAEMON="1")
            ls = median_ms(lambda: subprocess.run(
                [sys.executable, "-m", "namespacefs", "ls"], capture_output=True, env=env, check=True), max(5, opts.runs // 4))
        finally:
            stop(box)
            p.stop()
            d.stop()
    load = os.getloadavg()[0]
    text = "\n".join([
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `bench/containers_bench.py "
        f"--engines {opts.engines} --runs {opts.runs}` on Linux {platform.release()}, {os.cpu_count()} CPUs, "
        f"load average {load:.2f}{' (a loaded, shared machine: a preliminary run)' if load > 1 else ''}.", "",
        f"{len(tree) - 1} containers ({third} Docker via its API, {third} Podman with 2 pods, {runcs} runc), "
        f"{recognised} recognised, {len(snap.processes)} processes.", "",
        "| what | time (median) |", "|---|---:|",
        f"| `engine_names` (what `nsfs ls` runs for names), engines recognised | {with_engines:.1f} ms |",
        f"| the same with every engine switched off (grouping only) | {without:.1f} ms |",
        f"| **recognising the engines adds** | **{with_engines - without:.1f} ms** |",
        f"| whole `nsfs ls` (Python start-up and scan included) | {ls:.0f} ms |", "",
        "Of which, each read once per tree: " + ", ".join(
            f"{what} {ms:.1f} ms" for what, ms in (("OCI states", parts["states"]), ("Docker API", parts["docker"]),
                                                   ("Podman stores", parts["podman"]),
                                                   ("rootless pause pids", parts["pauses"]))) + ".", "",
    ])
    (HERE / "RESULTS-engines.md").write_text("# Engines benchmark (issue 12)\n" + text)
    print(text)
    return 0


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
    parser.add_argument("--engines", type=int, default=0, metavar="N",
                        help="instead: what recognising engines adds to `nsfs ls` with N containers (50)")
    parser.add_argument("--profile", action="store_true", help="with --engines: where the time goes (one run)")
    opts = parser.parse_args()
    if opts.engines:
        return engines_main(opts)
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
