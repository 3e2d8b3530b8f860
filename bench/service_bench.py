"""Benchmark of the live service (issue 7). Run as root on an otherwise quiet host:

    .venv/bin/python bench/service_bench.py [--namespaces 5000] [--seconds 5] [--out bench/RESULTS-service.md]

Measures, against a real `nsfs serve` started here (temp socket, its own process group):
- event latency (namespace created -> event received by an SSE client) at 10 and 100 creations
  per second, for namespaces made the way runtimes make them (unshare, then exec) and, at
  10/s, for processes that fork and unshare without exec (only the settle re-read sees those);
- the share of namespaces living >= 1 s that produced both `created` and `destroyed`;
- warm GET /api/snapshot time and daemon RSS with --namespaces extra namespaces (uts namespaces
  held by fds of one helper process);
- that the daemon survives a netlink overrun (tiny receive buffer, a fork storm) and rescans,
  and a client disconnecting mid-stream.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import platform
import queue
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from namespacefs import kernel
from namespacefs.service import client
from namespacefs.service.events import Event

CLONE_NEWUTS = kernel.CLONE_FLAGS["uts"]
PR_SET_PDEATHSIG = 1


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

    def rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        return kb / 1024

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

    def pump() -> None:
        for e in stream:
            q.put((time.time(), e))

    threading.Thread(target=pump, daemon=True).start()
    time.sleep(0.5)
    return q


_libc = ctypes.CDLL(None, use_errno=True)


def make_namespace(exec_after: bool, life: float) -> tuple[int, float, int, int]:
    """Fork a child that unshares uts (and then execs sleep, or just sleeps); returns (pid, time of
    the unshare, inode, id) read back through a pipe."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no Python cleanup, only syscalls
        try:
            os.close(r)
            _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            kernel.unshare(CLONE_NEWUTS)
            t = time.time()
            fd = os.open("/proc/self/ns/uts", os.O_RDONLY)
            line = f"{t} {os.fstat(fd).st_ino} {kernel.ns_id(fd)}\n".encode()
            os.close(fd)
            os.write(w, line)
            os.close(w)
            if exec_after:
                os.execv("/bin/sleep", ["sleep", str(life)])
            time.sleep(life)
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        t, inode, ident = f.read().split()
    return pid, float(t), int(inode), int(ident)


def run_rate(sock: str, rate: float, seconds: float, exec_after: bool, life: float = 1.2) -> dict[str, Any]:
    q = collector(sock)
    made: dict[int, float] = {}  # 64-bit id (inodes are reused) -> created at
    children: list[tuple[int, float, int]] = []  # pid, kill at, id
    killed_at: dict[int, float] = {}
    start = time.monotonic()
    n = int(rate * seconds)
    for i in range(n):
        target = start + i / rate
        now = time.monotonic()
        if target > now:
            time.sleep(target - now)
        pid, t, _inode, ident = make_namespace(exec_after, 600)
        made[ident] = t
        children.append((pid, time.monotonic() + life, ident))
        reap(children, killed_at)
    while children:
        time.sleep(0.01)
        reap(children, killed_at)
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
    lat = sorted(created[i] - made[i] for i in created)
    dlat = sorted(destroyed[i] - killed_at[i] for i in destroyed if i in killed_at)
    both = sum(1 for i in made if i in created and i in destroyed)
    return {"rate": rate, "n": len(made), "exec": exec_after, "created": len(created), "destroyed": len(destroyed),
            "both": both, "p50": pct(lat, 50), "p95": pct(lat, 95), "max": lat[-1] if lat else None,
            "d50": pct(dlat, 50), "d95": pct(dlat, 95)}


def reap(children: list[tuple[int, float, int]], killed_at: dict[int, float]) -> None:
    now = time.monotonic()
    for entry in list(children):
        pid, when, ident = entry
        if when <= now:
            killed_at[ident] = time.time()
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            children.remove(entry)


def pct(values: list[float], p: int) -> float | None:
    if not values:
        return None
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


@contextlib.contextmanager
def many_namespaces(count: int) -> Iterator[int]:
    """One helper process holding `count` uts namespaces by fds; yields its pid."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setsid()
            _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            resource.setrlimit(resource.RLIMIT_NOFILE, (count + 100, count + 100))
            fds = []
            for _ in range(count):
                kernel.unshare(CLONE_NEWUTS)
                fds.append(os.open("/proc/self/ns/uts", os.O_RDONLY))
            os.write(w, b"ok\n")
            signal.pause()
        finally:
            os._exit(0)
    os.close(w)
    try:
        with os.fdopen(r) as f:
            if f.readline().strip() != "ok":
                raise SystemExit("could not make the namespaces")
        yield pid
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def held_by(d: Daemon, pid: int) -> int:
    snap = d.http.get("/api/snapshot").json()
    return sum(1 for ns in snap["namespaces"] if any(h.get("pid") == pid and h["kind"] == "fd" for h in ns["holders"]))


def timed_get(http: httpx.Client, url: str, n: int) -> list[float]:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        r = http.get(url)
        r.raise_for_status()
        len(r.content)
        times.append(time.perf_counter() - t)
    return times


def storm(count: int) -> None:
    for _ in range(count):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--namespaces", type=int, default=5000,
                        help="namespaces to add for the API/memory test (uts namespaces held by fds)")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--out", default=str(Path(__file__).with_name("RESULTS-service.md")))
    args = parser.parse_args()
    results: dict[str, Any] = {"load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        (base / "a").mkdir()
        d = Daemon(base / "a")
        try:
            results["idle"] = {"namespaces": d.status()["namespaces"], "rss": d.rss_mb(),
                               "snapshot": timed_get(d.http, "/api/snapshot", 20)}
            runs = [run_rate(d.socket, 10, args.seconds, True), run_rate(d.socket, 100, args.seconds, True),
                    run_rate(d.socket, 10, args.seconds, False)]
            results["runs"] = runs
            for r in runs:
                print(r, flush=True)
            # a client that disconnects mid-stream
            before = d.status()["subscribers"]
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(d.socket)
                s.sendall(b"GET /api/events HTTP/1.1\r\nHost: nsfs\r\n\r\n")
                s.recv(100)
            storm(50)
            deadline = time.monotonic() + 10
            while d.status()["subscribers"] > before and time.monotonic() < deadline:
                time.sleep(0.1)
            results["disconnect"] = {"subscribers_before": before, "after": d.status()["subscribers"],
                                     "alive": d.proc.poll() is None}
            extra = results["extra"] = args.namespaces  # on top of the host's own (which come and go)
            with many_namespaces(extra) as holder:
                t = time.monotonic()
                while held_by(d, holder) < extra:  # the host's other namespaces come and go
                    time.sleep(0.5)
                    if time.monotonic() - t > 300:
                        raise SystemExit("daemon did not see the namespaces")
                results["seen_after"] = time.monotonic() - t
                d.http.get("/api/snapshot")  # builds the JSON once for this snapshot
                warm = timed_get(d.http, "/api/snapshot", 30)
                st = d.status()
                results["big"] = {"namespaces": st["namespaces"], "processes": st["processes"], "warm": warm,
                                  "rss": d.rss_mb(), "full_duration": st["full_duration"], "holder": holder,
                                  "size": len(d.http.get("/api/snapshot").content),
                                  "one": timed_get(d.http, f"/api/namespaces/{holder}:uts", 20)}
                print(results["big"]["namespaces"], statistics.median(warm), results["big"]["rss"], flush=True)
        finally:
            d.stop()
        # overrun: a tiny netlink buffer and a fork storm
        (base / "b").mkdir()
        d = Daemon(base / "b", "--netlink-rcvbuf", "2048")
        try:
            storm(3000)
            time.sleep(3)
            st = d.status()
            q = collector(d.socket)
            pid, _t, inode, _ident = make_namespace(True, 600)
            seen = None
            deadline = time.time() + 15
            while time.time() < deadline and seen is None:
                with contextlib.suppress(queue.Empty):
                    _got, e = q.get(timeout=0.5)
                    if e.inode == inode and e.kind == "created":
                        seen = e
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            results["overrun"] = {"overruns": st["overruns"], "overrun_scans": st["scans"].get("overrun", 0),
                                  "alive": d.proc.poll() is None, "events_after": seen is not None}
        finally:
            d.stop()
    results["load_after"] = os.getloadavg()
    write(args.out, results, args)


def ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:.1f}"


def write(path: str, r: dict[str, Any], args: argparse.Namespace) -> None:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    big = r["big"]
    lines = [
        "# Live service benchmark (issue 7)", "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `bench/service_bench.py "
        f"--namespaces {args.namespaces} --seconds {args.seconds:g}`.", "",
        f"Machine: Linux {platform.release()}, {os.cpu_count()} CPUs, {mem:.0f} GiB RAM, Python {platform.python_version()}. "
        f"Load average before/after: {r['load_before'][0]:.2f} / {r['load_after'][0]:.2f}.", "",
        "## Event latency", "",
        "Namespace created (time taken in the child right after unshare(CLONE_NEWUTS)) -> `created` event received by an",
        "SSE client over the Unix socket; destroyed: SIGKILL of the only process -> `destroyed` received. Each namespace",
        "lives 1.2 s. Daemon defaults (debounce 10 ms, settle 250 ms, full rescan every 2 s).", "",
        "| creations/s | how | namespaces | created p50 / p95 / max (ms) | destroyed p50 / p95 (ms) | both events |",
        "|---:|---|---:|---|---|---:|",
    ]
    for run in r["runs"]:
        how = "unshare, then exec" if run["exec"] else "fork + unshare, no exec"
        lines.append(f"| {run['rate']:g} | {how} | {run['n']} | {ms(run['p50'])} / {ms(run['p95'])} / {ms(run['max'])} | "
                     f"{ms(run['d50'])} / {ms(run['d95'])} | {run['both']}/{run['n']} ({100 * run['both'] / run['n']:.0f}%) |")
    warm = sorted(big["warm"])
    idle = sorted(r["idle"]["snapshot"])
    lines += [
        "", "## API and memory", "",
        "| namespaces | processes | GET /api/snapshot warm p50 / p95 (ms) | response | one namespace p50 (ms) "
        "| daemon RSS |",
        "|---:|---:|---|---:|---:|---:|",
        f"| {r['idle']['namespaces']} (host) | | {ms(pct(idle, 50))} / {ms(pct(idle, 95))} | | | {r['idle']['rss']:.0f} MB |",
        f"| {big['namespaces']} | {big['processes']} | {ms(pct(warm, 50))} / {ms(pct(warm, 95))} | "
        f"{big['size'] / 2**20:.1f} MiB | "
        f"{ms(pct(sorted(big['one']), 50))} | {big['rss']:.0f} MB |",
        "", f"Times are client-side (httpx over the Unix socket, body read). A full scan with "
        f"{big['namespaces']} namespaces took {big['full_duration']:.2f} s; the daemon showed the "
        f"{r['extra']} new ones {r['seen_after']:.1f} s after they existed (held by fds only: the periodic full scan "
        "finds them). Targets: < 20 ms warm snapshot, < 150 MB RSS.", "",
        "## Robustness", "",
        f"- Netlink overrun: with a 2 KiB proc-connector buffer and a storm of 3000 forks, the daemon saw "
        f"{r['overrun']['overruns']} overrun(s), ran {r['overrun']['overrun_scans']} full rescan(s) for them, stayed up "
        f"({r['overrun']['alive']}), and still reported a namespace made afterwards ({r['overrun']['events_after']}).",
        f"- A client that disconnects mid-stream: event subscribers went back to {r['disconnect']['after']} (the "
        f"benchmark's own {r['disconnect']['subscribers_before']} streams) after it left and events flowed; daemon alive: "
        f"{r['disconnect']['alive']}.",
        "",
    ]
    Path(path).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
