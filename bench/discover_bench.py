"""Benchmark: cold `nsfs ls --json` against `lsns -J` on synthetic hosts of two shapes (issues 2, 16).

How to run it (as root, from the repository, after `bash bootstrap.sh`; ~15 min with the defaults):

    .venv/bin/python bench/discover_bench.py                          # both shapes, N = 250,1000,3000,4000
    .venv/bin/python bench/discover_bench.py --sizes 250,1000,8000 --shapes dense --repeat 9
    .venv/bin/python bench/discover_bench.py --no-profile --no-write  # quick: print, do not write the file
    .venv/bin/python bench/synthetic.py show 1000 --shape dense       # build, check and tear down one host

Shapes (bench/synthetic.py): "sets" puts N processes in N/10 namespace sets (with fds, sockets,
nsfs fds, threads and nsfs bind mounts in private mount namespaces); "dense" puts each process in
its own uts, ipc, net, mnt and cgroup namespaces. For each shape and N the host is built, verified,
and then, in the same run, REPEAT cold runs of each command alternate (a fresh process per run; one
unrecorded warm-up each). The nsfs/lsns ratio is the median of the ratios of each interleaved pair,
which other load on a shared machine disturbs less than the times themselves. Recorded per N: median
and spread of wall and CPU time, the namespaces each one reports, whether each finds the hidden
namespaces the builder made, and the units discovery has to walk (processes, threads, fds, mounts,
namespaces, counted here independently of nsfs). Also, with no synthetic processes at all: `nsfs ls`
against `lsns` on the host as it is (the small-host case). Then:

  linearity   time per unit per N and a least-squares fit of time against units, per shape
  profile     a per-phase timing of one `nsfs ls --json` in a child process (the phase functions
              wrapped with timers), per shape at --profile-n, and one pyinstrument run
  reads       `strace -f -y -e trace=openat,readlinkat` of one run: is any file opened or any link
              read twice within one snapshot?
  imports     `python -X importtime` of `nsfs ls`: what the command imports

Everything the bench builds lives in one process group that is killed on exit, Ctrl-C or SIGTERM
(and if this script dies, the builder's PR_SET_PDEATHSIG kills the group). Results go to
bench/RESULTS-discover.md (the hand-written analysis at its end is kept).

    .venv/bin/python bench/discover_bench.py phases     # (internal) one timed `nsfs ls --json`, as JSON
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from discover_report import audit_counts, ratio, summarize_profile, write_results  # noqa: E402
from synthetic import SHAPES, SyntheticHost  # noqa: E402

VENV_BIN = Path(sys.executable).parent
NSFS = [str(VENV_BIN / "nsfs"), "ls", "--json"]
#: nsfs limited to what util-linux 2.38's lsns looks at (processes, its own mount table): the
#: like-for-like comparison of the two engines; NSFS is the whole job (every source).
NSFS_LIKE_LSNS = [*NSFS, "--sources", "process,bindmount"]
LSNS = ["lsns", "-J"]
#: The hand-written analysis at the end of the results file survives a re-run (update it by hand).
ANALYSIS = "## Analysis (hand-written"


# --- measuring -------------------------------------------------------------------------------------


#: Runs that failed (command, last line of its stderr), retried and reported in the results.
FAILURES: list[tuple[str, str]] = []


def run_once(argv: list[str], tries: int = 10) -> tuple[float, float, bytes]:
    """Wall time, CPU time (user + system: less sensitive to other load on the host than wall time)
    and stdout of one run; a failed run is recorded and run again (at most tries)."""
    for _ in range(tries):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, check=False)
        elapsed = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
        if done.returncode == 0:
            return elapsed, cpu, done.stdout
        last = (done.stderr.decode(errors="replace").strip().splitlines() or ["(no message)"])[-1]
        FAILURES.append((" ".join([Path(argv[0]).name, *argv[1:]]), last))
        print(f"  run failed: {argv} -> {last}", flush=True)
    raise RuntimeError(f"{' '.join(argv)} failed {tries} times in a row")


def retried(argv: list[str], tries: int = 10, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """subprocess.run that records a failed run and runs it again (at most tries)."""
    for _ in range(tries):
        done = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)
        if done.returncode == 0:
            return done
        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        FAILURES.append((" ".join([Path(argv[0]).name, *argv[1:]]), last))
        print(f"  run failed: {argv} -> {last}", flush=True)
    raise RuntimeError(f"{' '.join(argv)} failed {tries} times in a row")


def load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


NS_LINKS = ("mnt", "uts", "ipc", "user", "pid", "net", "cgroup", "time")


def units() -> dict[str, int]:
    """What discovery has to walk, counted straight from /proc: processes, threads, fds, mounts
    (mountinfo lines summed over distinct mount namespaces) and namespaces (distinct ns links)."""
    counts = collections.Counter()
    mntns: dict[int, int] = {}
    namespaces: set[int] = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            threads = len(os.listdir(f"/proc/{name}/task"))
            fds = len(os.listdir(f"/proc/{name}/fd"))
            ns = os.stat(f"/proc/{name}/ns/mnt").st_ino
            namespaces.update(os.stat(f"/proc/{name}/ns/{t}").st_ino for t in NS_LINKS)
        except OSError:
            continue
        counts["processes"] += 1
        counts["threads"] += threads
        counts["fds"] += fds
        mntns.setdefault(ns, int(name))
    counts["namespaces"] = len(namespaces)
    for pid in mntns.values():
        with contextlib.suppress(OSError), open(f"/proc/{pid}/mountinfo", "rb") as f:
            counts["mounts"] += f.read().count(b"\n")
    counts["units"] = counts["processes"] + counts["threads"] + counts["fds"] + counts["mounts"] + counts["namespaces"]
    return dict(counts)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def found_hidden(host: SyntheticHost, inodes: set[int]) -> int:
    return sum(r["inode"] in inodes for r in host.hidden)


def holder_check(host: SyntheticHost, report: dict[str, Any]) -> list[str]:
    """Each hidden namespace must be reported with the holder kind the builder made it with."""
    by_inode = {ns["inode"]: ns for ns in report["namespaces"]}
    wrong = []
    for r in host.hidden:
        ns = by_inode.get(r["inode"])
        if ns is None or ns["type"] != r["type"] or r["kind"] not in {h["kind"] for h in ns["holders"]}:
            wrong.append(f"{r['kind']} {r['type']}:{r['inode']}")
    return wrong


def measure_small(repeat: int) -> dict[str, Any]:
    """`nsfs ls` (the table) against `lsns` on the host as it is: no synthetic processes."""
    argv_nsfs, argv_lsns = [str(VENV_BIN / "nsfs"), "ls"], ["lsns"]
    for argv in (argv_nsfs, argv_lsns):
        run_once(argv)
    nsfs_t, lsns_t = [], []
    for _ in range(repeat):
        nsfs_t.append(run_once(argv_nsfs)[0])
        lsns_t.append(run_once(argv_lsns)[0])
    result = {"nsfs": nsfs_t, "lsns": lsns_t, "load": load(), **units()}
    print(f"small host: nsfs ls {statistics.median(nsfs_t) * 1e3:.0f} ms, lsns {statistics.median(lsns_t) * 1e3:.0f} ms",
          flush=True)
    return result


def measure(n: int, repeat: int, shape: str) -> dict[str, Any]:
    with SyntheticHost(n, shape) as host:
        print(f"{shape} N={n}: built {n} processes in {host.manifest['sets']} sets in "
              f"{host.manifest['build_seconds']:.1f}s", flush=True)
        for argv in (NSFS, NSFS_LIKE_LSNS, LSNS):
            run_once(argv)  # warm-ups, not recorded
        load_before = load()
        failed_before = len(FAILURES)
        nsfs_t, like_t, lsns_t, durations = [], [], [], []
        nsfs_cpu, like_cpu, lsns_cpu = [], [], []
        nsfs_out = lsns_out = b""
        for _ in range(repeat):
            t, cpu, nsfs_out = run_once(NSFS)
            nsfs_t.append(t)
            nsfs_cpu.append(cpu)
            durations.append(json.loads(nsfs_out)["duration"])
            t, cpu, _ = run_once(NSFS_LIKE_LSNS)
            like_t.append(t)
            like_cpu.append(cpu)
            t, cpu, lsns_out = run_once(LSNS)
            lsns_t.append(t)
            lsns_cpu.append(cpu)
        failed = len(FAILURES) - failed_before
        counted = units()
        host.verify()  # still all there after the runs
        report = json.loads(nsfs_out)
        synthetic = set(host.pids)
        nsfs_inodes = {ns["inode"] for ns in report["namespaces"]}
        lsns_rows = json.loads(lsns_out)["namespaces"]
        lsns_inodes = {int(ns["ns"]) for ns in lsns_rows}
        only_lsns = [f"{ns['type']}:{ns['ns']} (pid {ns['pid']}{', a zombie' if _zombie(ns['pid']) else ''}, "
                     f"{'synthetic' if ns['pid'] in synthetic else 'not ours'})"
                     for ns in lsns_rows if int(ns["ns"]) not in nsfs_inodes]
        result = {
            "n": n, "shape": shape, "sets": host.manifest["sets"], **counted, "load": f"{load_before} → {load()}",
            "failed": failed,
            "nsfs": nsfs_t, "like": like_t, "lsns": lsns_t, "discover": durations,
            "nsfs_cpu": nsfs_cpu, "like_cpu": like_cpu, "lsns_cpu": lsns_cpu,
            "nsfs_found": len(nsfs_inodes), "lsns_found": len(lsns_inodes),
            "only_lsns": only_lsns, "only_nsfs": len(nsfs_inodes - lsns_inodes),
            "hidden": len(host.hidden), "hidden_nsfs": found_hidden(host, nsfs_inodes),
            "hidden_lsns": found_hidden(host, lsns_inodes), "wrong_holders": holder_check(host, report),
        }
    print(f"  nsfs {statistics.median(nsfs_t):.3f}s  lsns {statistics.median(lsns_t):.3f}s  ratio {ratio(nsfs_t, lsns_t):.2f}  "
          f"found {result['nsfs_found']} vs {result['lsns_found']}  units {counted['units']}", flush=True)
    return result


# --- the per-phase timing (runs in a child process) -----------------------------------------------


def phases() -> None:
    """One `nsfs ls --json` in this process with its phases wrapped in timers; prints JSON."""
    clock = time.perf_counter
    t0 = clock()
    from namespacefs import _walk, cli, discover, model
    from namespacefs.cli import output
    from namespacefs.discover import hierarchy, mounts, processes

    imported = clock() - t0
    spent: dict[str, float] = collections.defaultdict(float)

    def timed(label: str, func: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = clock()
            try:
                return func(*args, **kwargs)
            finally:
                spent[label] += clock() - start
        return wrapper

    _walk.walk = timed("    the compiled walk (_walk.walk, summed over its two threads: more than the line above "
                       "when they overlap)", _walk.walk)
    processes.scan = timed("  processes.scan (the walk, and its records into the scan)", processes.scan)
    mounts.scan = timed("  mounts.scan (bindmount: one mountinfo per mount namespace)", mounts.scan)
    hierarchy.resolve = timed("  hierarchy.resolve (what the walk did not open; relatives)", hierarchy.resolve)
    discover._cross_check_listns = timed("  _cross_check_listns", discover._cross_check_listns)
    discover.read_user_maps = timed("  read_user_maps", discover.read_user_maps)
    discover.freeze = timed("  freeze (the model)", discover.freeze)
    from namespacefs import core, names
    from namespacefs.cli import ls

    core.name = timed("core.name (containers recognised, then names applied)", core.name)
    core.engine_names = timed("  core.engine_names (containers)", core.engine_names)
    names.apply = timed("  names.apply (names database, defaults, paths)", names.apply)
    ls._contract = timed("the JSON contract with lsns's keys (ls._contract, Snapshot.to_dict inside)", ls._contract)
    discover.discover = timed("discover() total", discover.discover)
    model.Snapshot.to_dict = timed("Snapshot.to_dict", model.Snapshot.to_dict)
    output.json_bytes = timed("json_bytes (orjson, one call per item)", output.json_bytes)
    core.discover = discover.discover
    start = clock()
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        cli.main(["ls", "--json"])
    total = clock() - start
    print(json.dumps({"import": imported, "command": total, **spent}))


def phase_table(runs: int = 3) -> dict[str, float]:
    """Median per phase over a few child runs."""
    samples: dict[str, list[float]] = collections.defaultdict(list)
    for _ in range(runs):
        out = retried([sys.executable, __file__, "phases"]).stdout
        for k, v in json.loads(out.strip().splitlines()[-1]).items():
            samples[k].append(v)
    return {k: statistics.median(v) for k, v in samples.items()}


def pyinstrument_profile(workdir: str) -> str:
    out = f"{workdir}/profile.txt"
    retried([str(VENV_BIN / "pyinstrument"), "-r", "text", "-o", out, str(VENV_BIN / "nsfs"), "ls", "--json"])
    return Path(out).read_text()


# --- reads audit -----------------------------------------------------------------------------------


def audit_reads(workdir: str) -> dict[str, Any]:
    """strace one `nsfs ls --json`; the paths opened or link-read more than once (per syscall)."""
    log = f"{workdir}/strace.log"
    retried(["strace", "-f", "-y", "-qq", "-e", "trace=openat,readlinkat", "-o", log, *NSFS])
    return audit_counts(Path(log).read_text())


def import_times() -> list[tuple[int, str]]:
    """The slowest top-level imports (cumulative µs) of `nsfs ls`."""
    done = retried([sys.executable, "-X", "importtime", "-m", "namespacefs", "ls"])
    rows = []
    for line in done.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m and len(m.group(3)) <= 1:  # top level only
            rows.append((int(m.group(2)), m.group(4)))
    return sorted(rows, reverse=True)


# --- analysis and the results file -----------------------------------------------------------------


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "phases":
        phases()
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="250,1000,3000,4000", help="comma-separated N (default 250,1000,3000,4000)")
    parser.add_argument("--shapes", default="sets,dense", help="comma-separated shapes: sets, dense (default both)")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each command per shape and N (default 5)")
    parser.add_argument("--profile-n", type=int, default=1000, help="N of the per-phase profile (default 1000)")
    parser.add_argument("--no-profile", action="store_true", help="skip the phases, pyinstrument, strace and importtime")
    parser.add_argument("--no-write", action="store_true", help="print the results instead of writing the file")
    parser.add_argument("--final", action="store_true",
                        help="a quiet machine: do not mark the results as preliminary")
    args = parser.parse_args()
    sizes, shapes = _checked(parser, args)

    def stop(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored (`cmd &`)
    results: list[dict[str, Any]] = []
    extra: dict[str, Any] = {"preliminary": not args.final}
    with tempfile.TemporaryDirectory(prefix="nsfs-discover-bench-out-") as workdir:
        # cold means a scan: never a running daemon's snapshot; and names go to a temp database
        os.environ["NSFS_NO_DAEMON"] = "1"
        os.environ["NSFS_DB"] = f"{workdir}/names.db"
        extra["small"] = measure_small(max(args.repeat, 9))
        for n in sizes:
            for shape in shapes:
                results.append(measure(n, args.repeat, shape))
        if not args.no_profile:
            extra["phases"], extra["profile_n"] = {}, args.profile_n
            for shape in shapes:
                with SyntheticHost(args.profile_n, shape):
                    print(f"profiling {shape} at N={args.profile_n}", flush=True)
                    extra["phases"][shape] = phase_table()
                    if shape == shapes[-1]:
                        extra["profile"] = summarize_profile(pyinstrument_profile(workdir))
                        extra["pyinstrument_shape"] = shape
            with SyntheticHost(min(sizes)):
                print(f"auditing reads at N={min(sizes)}", flush=True)
                extra["audit"], extra["audit_n"] = audit_reads(workdir), min(sizes)
            extra["imports"] = import_times()
    text = write_results(results, extra, args.repeat, FAILURES)
    if args.no_write:
        print(text)
    else:
        path = HERE / "RESULTS-discover.md"
        kept = path.read_text().partition(ANALYSIS)[2] if path.exists() else ""
        path.write_text(text + ("\n" + ANALYSIS + kept if kept else ""))
        print(f"wrote {HERE / 'RESULTS-discover.md'}")


def _checked(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[list[int], list[str]]:
    """The sizes and shapes asked for (parser.error for bad ones, or when not root)."""
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--sizes: not a list of numbers: {args.sizes}")
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    if not shapes or set(shapes) - set(SHAPES):
        parser.error(f"--shapes: each one of {', '.join(SHAPES)}")
    if not sizes or min(sizes) < 10 or args.repeat < 1:
        parser.error("every size must be at least 10 and --repeat at least 1")
    if os.geteuid() != 0:
        parser.error("must run as root (it creates namespaces and mounts)")
    return sizes, shapes


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted; everything the bench made is torn down", file=sys.stderr)
        sys.exit(130)
