"""Benchmark of the live service (issues 7 and 15). Run as root on an otherwise quiet host:

    .venv/bin/python bench/service_bench.py                  # both shapes at N=1000, 60 s idle (~10 min)
    .venv/bin/python bench/service_bench.py --quick          # N=100, 10 s idle: a smoke run

For each synthetic host shape (bench/synthetic.py: "sets", N processes in N/10 namespace sets; and
"dense", every process in its own uts/ipc/net/mnt/cgroup namespaces) it starts a real `nsfs serve`
(temp socket, own process group, its defaults; a names database with one rename) and measures:
- its CPU (its own and its reaped children's: utime+stime+cutime+cstime of /proc/PID/stat) over
  `--idle` seconds with nothing of ours changing, and during 100 namespace creations per second;
  its RSS;
- GET /api/snapshot (warm) and one namespace, client-side over the Unix socket;
- `nsfs ls --json` and `nsfs ls` end to end (process start included) with the daemon running (they
  print what the daemon rendered: GET /api/ls), and GET /api/ls?json=1 itself (warm);
- event latency: namespace made -> `created` received by an SSE client, at 10 and 100 per second
  (unshare then exec; at 100/s also with Poisson arrivals), and for unshare() and setns() by processes that forked long before (no
  process event: the syscall tracepoints); `destroyed` after SIGKILL;
Once, on a host of its own: a netlink overrun (tiny receive buffer, a fork storm) and a client
that disconnects mid-stream.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import itertools
import os
import queue
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from namespacefs import kernel
from namespacefs.service import client
from namespacefs.service.events import Event
from synthetic import SyntheticHost  # (bench/ is on sys.path: the script's directory)

UTS = kernel.CLONE_FLAGS["uts"]
PR_SET_PDEATHSIG = 1
TICK = os.sysconf("SC_CLK_TCK")
_libc = ctypes.CDLL(None, use_errno=True)


class Daemon:
    def __init__(self, tmp: Path, *extra: str) -> None:
        self.socket = str(tmp / "api.sock")
        self.proc = subprocess.Popen([sys.executable, "-m", "namespacefs", "serve", "--socket", self.socket, *extra],
                                     start_new_session=True, env={**os.environ, "NSFS_DB": str(tmp / "names.db")})
        self.http = httpx.Client(transport=httpx.HTTPTransport(uds=self.socket), base_url="http://nsfs", timeout=60)
        deadline = time.monotonic() + 300
        while True:
            if self.proc.poll() is not None:
                raise SystemExit("daemon died")
            with contextlib.suppress(httpx.TransportError):
                if self.http.get("/api/status").status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise SystemExit("daemon did not start")
            time.sleep(0.2)

    def status(self) -> dict[str, Any]:
        return self.http.get("/api/status").json()

    def cpu(self) -> float:
        """Seconds of CPU the daemon and its reaped children have used."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return sum(int(x) for x in fields[11:15]) / TICK  # utime stime cutime cstime

    def threads(self) -> dict[str, float]:
        """CPU seconds by thread name (the daemon names its threads: nsfs-updater, nsfs-mountinfo, ...;
        the HTTP server is `python`), summed over the threads of each name."""
        out: dict[str, float] = {}
        for tid in os.listdir(f"/proc/{self.proc.pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{self.proc.pid}/task/{tid}/stat") as f:
                text = f.read()
                name = text[text.index("(") + 1:text.rindex(")")]
                fields = text.rsplit(")", 1)[1].split()
                out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / TICK
        return out

    def rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024

    def stop(self) -> None:
        self.http.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def collector(sock: str) -> queue.Queue[tuple[float, Event]]:
    stream = client.stream_events(sock, kinds="created,destroyed", types="uts")
    assert stream is not None
    q: queue.Queue[tuple[float, Event]] = queue.Queue()
    threading.Thread(target=lambda: [q.put((time.time(), e)) for e in stream], daemon=True).start()
    time.sleep(0.5)
    return q


def _child(w: int, exec_after: bool, wait_fd: int | None) -> None:
    """In a forked child: (wait for a byte on wait_fd,) unshare uts, report, then exec or sleep."""
    try:
        os.setpgid(0, 0)
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if wait_fd is not None:
            os.read(wait_fd, 1)
        kernel.unshare(UTS)
        t = time.time()
        fd = os.open("/proc/self/ns/uts", os.O_RDONLY)
        os.write(w, f"{t} {os.fstat(fd).st_ino} {kernel.ns_id(fd)}\n".encode())
        os.close(fd)
        if exec_after:
            os.execv("/bin/sleep", ["sleep", "600"])
        time.sleep(600)
    finally:
        os._exit(0)


def make_namespace(exec_after: bool) -> tuple[int, float, int, int]:
    """A child that unshares uts at once; (pid, time of the unshare, inode, id)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        _child(w, exec_after, None)
    os.close(w)
    with os.fdopen(r) as f:
        t, inode, ident = f.read(200).split()
    return pid, float(t), int(inode), int(ident)


def _per_thread(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
    """% of one core by thread name over `seconds`."""
    return {name: round(100 * (v - before.get(name, 0.0)) / seconds, 2) for name, v in after.items()
            if v > before.get(name, 0.0)}


def run_rate(q: queue.Queue[tuple[float, Event]], rate: float, seconds: float, how: str,
             d: Daemon | None = None, arrivals: str = "even") -> dict[str, Any]:
    """`rate` namespaces a second for `seconds`, each living 1.2 s; how: "exec" (unshare then exec)
    or "old" (unshare by a process forked 2 s before, no exec: only the tracepoints see it). `q`:
    the events of the one stream every run of a shape reads (collector), so the daemon serves one
    client as each run starts (a stream per run would leave the earlier ones subscribed).
    arrivals: "even" (one each 1/rate s: what a daemon's cadence can fall into step with, for
    better or worse) or "poisson" (random gaps of that mean, seeded: how independent processes come)."""
    made: dict[int, float] = {}
    children: list[tuple[int, float, int]] = []
    killed: dict[int, float] = {}
    pool = [_parked() for _ in range(int(rate * 2))] if how == "old" else []
    time.sleep(2 if pool else 0)
    cpu0, t0 = (d.cpu(), time.monotonic()) if d else (0.0, time.monotonic())
    threads0 = d.threads() if d else {}
    count = int(rate * seconds)
    gaps = random.Random(15).expovariate if arrivals == "poisson" else lambda rate: 1 / rate
    offsets = list(itertools.accumulate((gaps(rate) for _ in range(count - 1)), initial=0.0))
    start = time.monotonic()
    for i in range(count):
        target = start + offsets[i]
        time.sleep(max(0.0, target - time.monotonic()))
        if pool:
            pid, go, r = pool.pop(0)
            os.write(go, b"x")
            with os.fdopen(r) as f:
                t, _inode, ident = f.readline().split()
            pool.append(_parked())
            t_made, ident_made = float(t), int(ident)
        else:
            pid, t_made, _inode, ident_made = make_namespace(True)
        made[ident_made] = t_made
        children.append((pid, time.monotonic() + 1.2, ident_made))
        _reap(children, killed)
    cpu = (d.cpu() - cpu0) / (time.monotonic() - t0) if d else None
    threads = _per_thread(threads0, d.threads(), time.monotonic() - t0) if d else None
    while children:
        time.sleep(0.01)
        _reap(children, killed)
    for pid, _go, _r in pool:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    created, destroyed = _drain(q, made)
    lat = sorted(created[i] - made[i] for i in created)
    dlat = sorted(destroyed[i] - killed[i] for i in destroyed if i in killed)
    return {"rate": rate, "n": len(made), "how": how, "arrivals": arrivals,
            "both": sum(1 for i in made if i in created and i in destroyed),
            "p50": pct(lat, 50), "p95": pct(lat, 95), "max": lat[-1] if lat else None,
            "d50": pct(dlat, 50), "d95": pct(dlat, 95), "cpu": cpu, "threads": threads}


def _parked() -> tuple[int, int, int]:
    """A child that waits, then unshares when told (a byte on `go`); (pid, go, report)."""
    r, w = os.pipe()
    wait_r, go = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.close(go)
        _child(w, False, wait_r)
    os.close(w)
    os.close(wait_r)
    return pid, go, r


def _drain(q: queue.Queue[tuple[float, Event]], made: dict[int, float]) -> tuple[dict[int, float], dict[int, float]]:
    created: dict[int, float] = {}
    destroyed: dict[int, float] = {}
    deadline = time.time() + 15
    while time.time() < deadline and (len(created) < len(made) or len(destroyed) < len(made)):
        try:
            got, e = q.get(timeout=0.5)
        except queue.Empty:
            continue
        if e.id in made:
            (created if e.kind == "created" else destroyed).setdefault(e.id, got)
    return created, destroyed


def _reap(children: list[tuple[int, float, int]], killed: dict[int, float]) -> None:
    now = time.monotonic()
    for entry in [c for c in children if c[1] <= now]:
        killed[entry[2]] = time.time()
        os.kill(entry[0], signal.SIGKILL)
        os.waitpid(entry[0], 0)
        children.remove(entry)


def pct(values: list[float], p: int) -> float | None:
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))] if values else None


def timed(run: Any, n: int) -> list[float]:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return sorted(times)


def _get(http: httpx.Client, url: str) -> None:
    r = http.get(url)
    r.raise_for_status()
    len(r.content)


def _cli(sock: str, *argv: str) -> None:
    subprocess.run([sys.executable, "-m", "namespacefs", *argv], stdout=subprocess.DEVNULL, check=True,
                   env={**os.environ, "NSFS_SOCKET": sock, "NSFS_NO_DAEMON": ""})


def measure_shape(base: Path, shape: str, n: int, idle: float, seconds: float) -> dict[str, Any]:
    with SyntheticHost(n, shape) as host:
        d = Daemon(base)
        try:
            pids = set(host.pids)
            while not pids <= {p["pid"] for p in d.http.get("/api/snapshot").json()["processes"]}:
                time.sleep(0.5)
            # a names database with a rename in it, as on any host where someone renamed a namespace
            subprocess.run([sys.executable, "-m", "namespacefs", "rename", "--db", str(base / "names.db"),
                            f"{os.getpid()}:uts", "bench-host"], check=True, stdout=subprocess.DEVNULL,
                           env={**os.environ, "NSFS_NO_DAEMON": "1"})
            time.sleep(1.0)  # (the daemon names its model again: the database changed)
            st = d.status()
            out: dict[str, Any] = {"shape": shape, "n": n, "namespaces": st["namespaces"], "processes": st["processes"]}
            cpu0, t0, threads0 = d.cpu(), time.monotonic(), d.threads()
            time.sleep(idle)
            out["idle_cpu"] = (d.cpu() - cpu0) / (time.monotonic() - t0)
            out["idle_threads"] = _per_thread(threads0, d.threads(), time.monotonic() - t0)
            out["rss"] = d.rss_mb()
            one = next(iter(d.http.get("/api/namespaces?type=uts").json()))["inode"]
            _get(d.http, "/api/snapshot")
            out["snapshot"] = timed(lambda: _get(d.http, "/api/snapshot"), 30)
            out["one"] = timed(lambda: _get(d.http, f"/api/namespaces/{one}"), 30)
            out["ls_json"] = timed(lambda: _cli(d.socket, "ls", "--json"), 10)
            out["ls"] = timed(lambda: _cli(d.socket, "ls"), 10)
            out["ls_api"] = timed(lambda: _get(d.http, "/api/ls?json=1"), 30)
            out["sweep"] = d.status()["mechanisms"]["sweep"]
            q = collector(d.socket)
            out["runs"] = [run_rate(q, 10, seconds, "exec"), run_rate(q, 100, seconds, "exec", d),
                           run_rate(q, 100, seconds, "exec", d, "poisson"), run_rate(q, 10, seconds, "old")]
            out["status"] = d.status()
            print(shape, {k: v for k, v in out.items() if k != "status"}, flush=True)
            return out
        finally:
            d.stop()


def robustness(base: Path) -> dict[str, Any]:
    d = Daemon(base, "--netlink-rcvbuf", "2048")
    try:
        before = d.status()["subscribers"]
        with socket.socket(socket.AF_UNIX) as s:  # a client that leaves mid-stream
            s.connect(d.socket)
            s.sendall(b"GET /api/events HTTP/1.1\r\nHost: nsfs\r\n\r\n")
            s.recv(100)
        storm(3000)
        time.sleep(3)
        st = d.status()
        q = collector(d.socket)
        pid, _t, inode, _ident = make_namespace(True)
        seen = None
        deadline = time.time() + 15
        while time.time() < deadline and seen is None:
            with contextlib.suppress(queue.Empty):
                _got, e = q.get(timeout=0.5)
                seen = e if e.inode == inode and e.kind == "created" else None
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return {"overruns": st["overruns"], "overrun_scans": st["scans"].get("overrun", 0),
                "alive": d.proc.poll() is None, "events_after": seen is not None, "subscribers_before": before,
                "subscribers_after": d.status()["subscribers"] - 1}
    finally:
        d.stop()


def storm(count: int) -> None:
    for _ in range(count):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=1000, help="processes of each synthetic shape (default 1000)")
    parser.add_argument("--shapes", default="sets,dense")
    parser.add_argument("--idle", type=float, default=60.0, help="seconds of idle CPU measurement (default 60)")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds of each event-rate run")
    parser.add_argument("--quick", action="store_true", help="N=100, 10 s idle, 2 s runs")
    parser.add_argument("--note", default="", help="a line for the results (e.g. 'machine loaded')")
    parser.add_argument("--out", default=str(Path(__file__).with_name("RESULTS-service.md")))
    args = parser.parse_args()
    if args.quick:
        args.n, args.idle, args.seconds = 100, 10.0, 2.0
    results: dict[str, Any] = {"load_before": os.getloadavg(), "shapes": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i, shape in enumerate(args.shapes.split(",")):
            (Path(tmp) / str(i)).mkdir()
            results["shapes"].append(measure_shape(Path(tmp) / str(i), shape, args.n, args.idle, args.seconds))
        (Path(tmp) / "r").mkdir()
        results["robustness"] = robustness(Path(tmp) / "r")
    results["load_after"] = os.getloadavg()
    from service_report import write

    write(args.out, results, args)


if __name__ == "__main__":
    main()
