"""What recognising container engines adds to `nsfs ls` (issue 12); appends to bench/RESULTS-containers.md.

    .venv/bin/python bench/engines_bench.py [--containers 50] [--runs 20]

Starts its own dockerd and podman (as the tests do: own data-root, exec-root, socket, store; a busybox
image imported, never pulled) and runs --containers containers: a third Docker, a third Podman (two
of them pods), a third plain runc. Then times, in-process and on the same snapshot, what `nsfs ls`
runs for the names of namespaces (containers.engine_names: the container tree without hostnames)
with the engines recognised, and the same grouping with every engine switched off; the difference
is what recognising them costs. Everything it started is removed at the end.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from namespacefs import containers, core  # noqa: E402
from namespacefs.containers import engines  # noqa: E402
from namespacefs.model import Snapshot  # noqa: E402
from runtimes import IMAGE, Dockerd, Podman, Started, busybox_tar, start_runc, stop  # noqa: E402


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


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--containers", type=int, default=50)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--profile", action="store_true", help="print where the time goes (one run)")
    opts = parser.parse_args()
    third = max(1, opts.containers // 3)
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
            runcs = opts.containers - 2 * third
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
            identify = engines.World.identify
            engines.World.identify = lambda self, c: None  # type: ignore[method-assign,assignment,return-value]
            try:
                without = median_ms(lambda: containers.engine_names(
                    snap, containers.find(snap, oci_roots=roots, hostnames=False)), opts.runs)
            finally:
                engines.World.identify = identify  # type: ignore[method-assign]
            env = dict(os.environ, NSFS_OCI_ROOTS=roots[0][0], NSFS_NO_DAEMON="1")
            ls = median_ms(lambda: __import__("subprocess").run(
                [sys.executable, "-m", "namespacefs", "ls"], capture_output=True, env=env, check=True), max(5, opts.runs // 4))
        finally:
            stop(box)
            p.stop()
            d.stop()
    load = os.getloadavg()[0]
    text = "\n".join([
        "", "## Recognising engines (issue 12)", "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `bench/engines_bench.py "
        f"--containers {opts.containers} --runs {opts.runs}` on Linux {platform.release()}, {os.cpu_count()} CPUs, "
        f"load average {load:.2f}{' (a loaded, shared machine: a preliminary run)' if load > 1 else ''}.", "",
        f"{len(tree) - 1} containers ({third} Docker via its API, {third} Podman with 2 pods, {runcs} runc), "
        f"{recognised} recognised, {len(snap.processes)} processes.", "",
        "| what | time (median) |", "|---|---:|",
        f"| `engine_names` (what `nsfs ls` runs for names), engines recognised | {with_engines:.1f} ms |",
        f"| the same with every engine switched off (grouping only) | {without:.1f} ms |",
        f"| **recognising the engines adds** | **{with_engines - without:.1f} ms** |",
        f"| whole `nsfs ls` (Python start-up and scan included) | {ls:.0f} ms |", "",
    ])
    with open(HERE / "RESULTS-containers.md", "a") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
