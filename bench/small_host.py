"""`nsfs ls` on a small host (issue 16: ~70 processes and a dozen namespaces, a laptop or a VM:
at most 60 ms end to end), measured on any host: a pid and a mount namespace of our own, whose
/proc shows only what runs in it (`unshare --pid --fork --mount-proc`), with ~70 processes and
a few namespaces more (one process in new net, uts and ipc namespaces, one in a user namespace
with a uts namespace of its own). Everything in it ends with it.

    .venv/bin/python bench/small_host.py RUNS TREE...     # e.g. 20 . (or a checkout to compare)

Each run is a whole `nsfs ARGS` process (the venv's `nsfs` script, TREE/src first on PYTHONPATH;
NSFS_ARGS, default `ls`) with no daemon to ask (NSFS_SOCKET in a directory that does not exist)
and a names database that does not exist; `python -c pass` and util-linux `lsns` are timed in the
same runs. The table gives wall and CPU (user + sys) medians and minimums in ms: on a shared
machine compare CPU, and say the load.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PROCESSES = 64  # (with the two below and this script's own: ~70)


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall, cpu) in ms of one process, its children included."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    wall = time.perf_counter() - start
    now = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall * 1e3, (now.ru_utime - used.ru_utime + now.ru_stime - used.ru_stime) * 1e3


def inside(runs: int, trees: list[str]) -> None:
    """In the small host (we are its pid 1): its processes, then the runs, alternating."""
    for _ in range(PROCESSES):
        subprocess.Popen(["sleep", "1000"])
    subprocess.Popen(["unshare", "--net", "--uts", "--ipc", "sleep", "1000"])
    subprocess.Popen(["unshare", "--user", "--map-root-user", "--uts", "sleep", "1000"])
    time.sleep(0.5)
    nsfs = os.path.join(os.path.dirname(sys.executable), "nsfs")
    args = os.environ.get("NSFS_ARGS", "ls").split()
    env = dict(os.environ, NSFS_SOCKET="/nonexistent/namespacefs-bench/api.sock",
               NSFS_DB="/nonexistent/namespacefs-bench/names.db")
    env.pop("NSFS_NO_DAEMON", None)
    commands = {"python -c pass": ([sys.executable, "-c", "pass"], env), "lsns": (["lsns"], env)}
    for tree in trees:
        commands[f"nsfs {' '.join(args)} ({os.path.basename(os.path.abspath(tree))})"] = (
            [nsfs, *args], dict(env, PYTHONPATH=os.path.join(os.path.abspath(tree), "src")))
    found: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    load = _load()
    for _ in range(runs):
        for name, (argv, run_env) in commands.items():
            found[name].append(timed(argv, run_env))
    procs = sum(name.isdigit() for name in os.listdir("/proc"))
    namespaces = subprocess.run(["lsns", "-n", "-o", "NS"], capture_output=True, text=True, check=True).stdout.split()
    print(f"small host: {procs} processes, {len(namespaces)} namespaces (lsns); load average {' '.join(load)} before, "
          f"{' '.join(_load())} after; {runs} runs each\n")
    print("| command | wall median | wall min | cpu median | cpu min |\n|---|---:|---:|---:|---:|")
    for name, values in found.items():
        walls, cpus = [v[0] for v in values], [v[1] for v in values]
        print(f"| {name} | {statistics.median(walls):.1f} | {min(walls):.1f} | {statistics.median(cpus):.1f} | "
              f"{min(cpus):.1f} |")


def _load() -> list[str]:
    with open("/proc/loadavg") as f:
        return f.read().split()[:3]


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "inside":
        inside(int(sys.argv[2]), sys.argv[3:])
    elif len(sys.argv) > 2:
        subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, __file__, "inside", *sys.argv[1:]],
                       check=True)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
