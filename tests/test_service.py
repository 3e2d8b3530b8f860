"""The live service, driven for real: the daemon runs as a subprocess (own process group, temp
socket, loopback port), namespaces are made by processes the tests start and kill."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from conftest import kill_group
from namespacefs import core, kernel
from namespacefs.discover import discover
from namespacefs.discover.incremental import refresh
from namespacefs.fs.source import Source, snapshot_taker
from namespacefs.model import Snapshot, diff
from namespacefs.service import client, outside_name
from namespacefs.service.events import Event
from namespacefs.service.live import Live

STARTUP = 120.0  # the first full scan of a busy host can take a while
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


class Daemon:
    def __init__(self, tmp: Path, options: tuple[str, ...] = ("--interval", "1")) -> None:
        self.socket = str(tmp / "api.sock")
        self.token_file = str(tmp / "token")
        self.db = str(tmp / "names.db")
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "namespacefs", "serve", "--socket", self.socket, *options,
             "--listen", f"127.0.0.1:{self.port}", "--token-file", self.token_file],
            start_new_session=True, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "NSFS_DB": self.db})  # never the host's names database
        self.http = httpx.Client(transport=httpx.HTTPTransport(uds=self.socket), base_url="http://nsfs", timeout=30)
        deadline = time.monotonic() + STARTUP
        while True:
            assert self.proc.poll() is None, self.proc.stderr.read() if self.proc.stderr else "daemon died"
            try:
                if self.http.get("/api/status").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "daemon did not start"
            time.sleep(0.2)
        self.token = Path(self.token_file).read_text().strip()
        self.url = f"http://127.0.0.1:{self.port}"

    def status(self) -> dict[str, Any]:
        return self.http.get("/api/status").json()

    def wait_for(self, check: Callable[[], bool], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.1)

    def has(self, inode: int) -> bool:
        return self.http.get(f"/api/namespaces/{inode}").status_code == 200

    def stop(self) -> None:
        self.http.close()
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        kill_group(self.proc)
        assert "Traceback" not in (self.proc.stderr.read() if self.proc.stderr else "")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = Daemon(tmp_path_factory.mktemp("nsfs-service"))
    yield d
    d.stop()
    assert not os.path.exists(d.socket), "the daemon removes its socket on exit"
    assert not os.path.lexists(outside_name(d.socket)), "and its second name"


def ns_of(pid: int, nstype: str) -> tuple[int, int]:
    """(inode, 64-bit id) of a process's namespace, asked of the kernel directly."""
    fd = os.open(f"/proc/{pid}/ns/{nstype}", os.O_RDONLY)
    try:
        ident = kernel.ns_id(fd)
        assert ident is not None
        return os.fstat(fd).st_ino, ident
    finally:
        os.close(fd)


class Holder:
    """A process of ours in fresh namespaces (unshare(1)), in its own process group."""

    def __init__(self, *flags: str) -> None:
        self.proc = subprocess.Popen(["unshare", *flags, "sleep", "600"], start_new_session=True)
        deadline = time.monotonic() + 10
        while os.readlink(f"/proc/{self.proc.pid}/exe").endswith("unshare"):  # until it exec'd sleep
            assert time.monotonic() < deadline
            time.sleep(0.01)
        self.pid = self.proc.pid

    def ns(self, nstype: str) -> tuple[int, int]:
        """(inode, 64-bit id) of its namespace, asked of the kernel directly."""
        return ns_of(self.pid, nstype)

    def kill(self) -> None:
        kill_group(self.proc)


@pytest.fixture
def holders() -> Iterator[Callable[..., Holder]]:
    made: list[Holder] = []

    def make(*flags: str) -> Holder:
        h = Holder(*flags)
        made.append(h)
        return h

    yield make
    for h in made:
        h.kill()


class Events:
    """Every event the stream has delivered, kept: waiting for one never throws away another, so the
    order the daemon reports two events of one scan in (uts before net, or after) does not matter."""

    def __init__(self, stream: Iterator[Event]) -> None:
        self.seen: list[Event] = []
        self.arrived = threading.Condition()
        threading.Thread(target=self.pump, args=(stream,), daemon=True).start()

    def pump(self, stream: Iterator[Event]) -> None:
        for e in stream:
            with self.arrived:
                self.seen.append(e)
                self.arrived.notify_all()

    def wait(self, match: Callable[[Event], bool], timeout: float = 60.0) -> Event:
        deadline = time.monotonic() + timeout
        with self.arrived:
            while True:
                found = next((e for e in self.seen if match(e)), None)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                assert left > 0, "event not seen"
                self.arrived.wait(left)


def collect(stream: Iterator[Event]) -> Events:
    return Events(stream)


def wait_event(events: Events, match: Callable[[Event], bool], timeout: float = 60.0) -> Event:
    return events.wait(match, timeout)


def scan(sources: tuple[str, ...] | None = None) -> Snapshot:
    """A fresh scan of our own. Discovery can trip over a process that dies mid-read on a busy host
    (EINVAL from /proc/PID/mountinfo, reported to its owners): try again, a few times."""
    for attempt in range(3):
        try:
            return discover(sources) if sources else discover()
        except OSError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


# --- pure parts ----------------------------------------------------------------------------------


def test_a_snapshot_survives_the_json_round_trip() -> None:
    snap = scan()
    again = Snapshot.from_dict(json.loads(json.dumps(snap.to_dict())))  # type: ignore[attr-defined]
    assert again.to_dict() == snap.to_dict()
    assert again.by_id(next(ns.id for ns in snap if ns.id is not None)) is not None


def test_a_partial_rescan_sees_a_new_process_namespaces_come_and_go(holders: Callable[..., Holder]) -> None:
    before = scan(("process",))
    h = holders("--uts", "--ipc")
    uts, uts_id = h.ns("uts")
    after = refresh(before, {h.pid})
    appeared = {(ns.type, ns.inode, ns.id) for ns in diff(before, after).appeared}
    assert ("uts", uts, uts_id) in appeared
    assert ("ipc", *h.ns("ipc")) in appeared
    assert after.get(uts) is not None and after.get(uts).processes == (h.pid,)  # type: ignore[union-attr]
    h.kill()
    gone = refresh(after, {h.pid})
    assert gone.get(uts) is None and h.pid not in gone.processes
    assert ("uts", uts) in {(ns.type, ns.inode) for ns in diff(after, gone).vanished}


# --- the daemon ----------------------------------------------------------------------------------


def test_events_for_a_namespace_created_and_destroyed(daemon: Daemon, holders: Callable[..., Holder]) -> None:
    stream = client.stream_events(daemon.socket, kinds="created,destroyed", types="uts,net")
    assert stream is not None
    q = collect(stream)
    time.sleep(0.3)  # the subscription is in place once the stream answered; a little slack for the thread
    h = holders("--uts", "--net")
    uts, uts_id = h.ns("uts")
    net, net_id = h.ns("net")
    made = wait_event(q, lambda e: e.kind == "created" and e.inode == uts and e.id == uts_id)
    assert (made.type, made.id, made.pid) == ("uts", uts_id, h.pid)
    assert made.comm in ("unshare", "sleep")  # seen before or after its exec of sleep, on a busy host
    assert wait_event(q, lambda e: e.kind == "created" and e.inode == net and e.id == net_id).id == net_id
    h.kill()
    gone = wait_event(q, lambda e: e.kind == "destroyed" and e.inode == uts and e.id == uts_id)
    assert gone.id == uts_id and gone.time >= made.time


def test_events_for_a_process_joining_and_leaving_and_a_rename(daemon: Daemon, holders: Callable[..., Holder]) -> None:
    stream = client.stream_events(daemon.socket, kinds="created,joined,left,renamed", types="uts")
    assert stream is not None
    q = collect(stream)
    time.sleep(0.3)
    h = holders("--uts")
    uts, uts_id = h.ns("uts")
    made = wait_event(q, lambda e: e.kind == "created" and e.inode == uts and e.id == uts_id)
    # a second process enters the namespace (setns, then exec: no fork of its own) and leaves again
    joiner = subprocess.Popen(["nsenter", "-t", str(h.pid), "-u", "sleep", "600"], start_new_session=True)
    try:
        joined = wait_event(q, lambda e: e.kind == "joined" and e.inode == uts and e.pid == joiner.pid)
        assert joined.id == uts_id and joined.comm in ("nsenter", "sleep")  # read before or after its exec
    finally:
        kill_group(joiner)
    left = wait_event(q, lambda e: e.kind == "left" and e.inode == uts and e.pid == joiner.pid)
    assert left.id == uts_id and left.seq > joined.seq
    # a rename in the names database the daemon reads: the next full scan reports it
    renamed = subprocess.run([sys.executable, "-m", "namespacefs", "rename", f"uts:[{uts}]", "audited-uts"],
                             capture_output=True, text=True, timeout=60, env={**os.environ, "NSFS_DB": daemon.db})
    assert renamed.returncode == 0, renamed.stderr
    event = wait_event(q, lambda e: e.kind == "renamed" and e.inode == uts and e.id == uts_id)
    assert (event.id, event.name, event.old_name) == (uts_id, "audited-uts", made.name)


def test_the_api_agrees_with_a_fresh_scan(daemon: Daemon, holders: Callable[..., Holder]) -> None:
    h = holders("--user", "--map-root-user", "--uts", "--ipc")
    mine = {t: h.ns(t) for t in ("user", "uts", "ipc")}
    first = scan()
    # wait for a full scan that started after ours ended: the daemon's model must contain all we saw
    daemon.wait_for(lambda: daemon.status()["full_taken_at"] > first.taken_at + first.duration, timeout=90)
    served = Snapshot.from_dict(daemon.http.get("/api/snapshot").json())  # type: ignore[attr-defined]
    second = scan()
    for nstype, (inode, ident) in mine.items():
        ns, fresh = served.get(inode), second.get(inode)
        assert ns is not None and fresh is not None
        assert (ns.type, ns.id, ns.owner, ns.parent, ns.processes) == (nstype, ident, fresh.owner, fresh.parent, (h.pid,))
    assert served.get(mine["user"][0]).uid_map == second.get(mine["user"][0]).uid_map  # type: ignore[union-attr]
    stable = {ns.key: ns for ns in first if second.get(ns.inode) and second.get(ns.inode).key == ns.key}  # type: ignore[union-attr]
    missing = [k for k in stable if served.by_id(k[1]) is None] if stable else []
    assert not missing, f"namespaces alive throughout, missing from the daemon: {missing[:5]}"
    for key, ns in stable.items():
        got = served.by_id(key[1])
        assert got is not None and (got.type, got.inode, got.owner, got.parent) == (ns.type, ns.inode, ns.owner, ns.parent)
    one = daemon.http.get(f"/api/namespaces/{mine['uts'][0]}").json()
    assert one["id"] == mine["uts"][1] and one["process_details"][0]["pid"] == h.pid


def test_the_client_and_core_use_a_running_daemon(daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    before = daemon.status()["taken_at"]
    via_client = client.fetch_snapshot(daemon.socket)
    monkeypatch.setenv("NSFS_SOCKET", daemon.socket)
    via_core = core.snapshot(provider=client.fetch_snapshot)  # (the provider every front end gives it)
    after = daemon.status()["taken_at"]
    assert via_client is not None
    for snap in (via_client, via_core):
        assert before <= snap.taken_at <= after  # the daemon's snapshot, not a scan of our own
    clock = time.monotonic()
    assert client.fetch_snapshot(str(Path(daemon.socket).parent / "no-such.sock")) is None
    assert time.monotonic() - clock < 0.5


def test_the_filesystem_reads_the_daemons_snapshot_and_scans_only_for_a_fresh_one(
        daemon: Daemon, holders: Callable[..., Holder], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NSFS_SOCKET", daemon.socket)
    take = snapshot_taker()
    before = daemon.status()["taken_at"]
    periodic = take(False)
    assert before <= periodic.taken_at <= daemon.status()["taken_at"]  # the daemon's, not a scan
    clock = time.time()
    assert take(True).taken_at >= clock  # a scan of its own, now
    # a lookup of a namespace that just appeared gets a snapshot that has it, at once
    source = Source(take)
    made = holders("--uts")
    uts, _ = made.ns("uts")

    async def lookup() -> Snapshot:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(source.run)
            got = await source.refresh(newer_than=time.time())
            nursery.cancel_scope.cancel()
        return got

    clock = time.monotonic()
    got = trio.run(lookup)
    assert got.get(uts) is not None and time.monotonic() - clock < 1.5


def test_the_daemon_stays_reachable_when_the_filesystem_is_mounted_on_its_socket_directory(
        daemon: Daemon, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Both defaults share /run/namespacefs: the socket's second name, beside the directory, is
    how processes started after the mount still reach the daemon."""
    directory = os.path.dirname(daemon.socket)
    outside = outside_name(daemon.socket)
    assert stat.S_ISSOCK(os.lstat(outside).st_mode) and stat.S_IMODE(os.lstat(outside).st_mode) == 0o600
    with httpx.Client(transport=httpx.HTTPTransport(uds=outside), base_url="http://nsfs", timeout=30) as second:
        assert second.get("/api/status").json()["started_at"] == daemon.status()["started_at"]  # the same daemon
    before = daemon.status()["taken_at"]
    mounted = subprocess.run([sys.executable, "-m", "namespacefs", "mount", directory, "--db", str(tmp_path / "n.db")],
                             capture_output=True, text=True, timeout=120)
    assert mounted.returncode == 0, mounted.stderr
    try:
        assert sorted(os.listdir(directory))[:3] == ["cgroup", "ipc", "mnt"]  # the socket is covered
        monkeypatch.setenv("NSFS_SOCKET", daemon.socket)
        monkeypatch.setattr(core, "discover", lambda *_a, **_k: pytest.fail("scanned: the daemon was not reached"))
        snap = core.snapshot(provider=client.fetch_snapshot)
    finally:
        subprocess.run([sys.executable, "-m", "namespacefs", "umount", directory], check=True, timeout=60)
    assert before <= snap.taken_at <= daemon.status()["taken_at"]  # the daemon's snapshot, not a scan


def test_tcp_needs_the_token_and_the_socket_is_root_only(daemon: Daemon) -> None:
    assert stat.S_IMODE(os.stat(daemon.socket).st_mode) == 0o600
    assert daemon.http.get("/api/status").status_code == 200  # the Unix socket: the file mode is the check
    with httpx.Client(base_url=daemon.url, timeout=30) as tcp:
        assert tcp.get("/api/status").status_code == 401
        assert tcp.get("/api/snapshot", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert tcp.get("/metrics", params={"token": daemon.token}).status_code == 401  # never a token in a URL
        ok = tcp.get("/api/status", headers={"Authorization": f"Bearer {daemon.token}"})
        assert ok.status_code == 200 and ok.json()["namespaces"] > 0
        bearer = {"Authorization": f"Bearer {daemon.token}"}
        assert tcp.get("/openapi.json", headers=bearer).json()["info"]["title"] == "namespacefs"


def test_malformed_requests_get_a_4xx_and_the_daemon_lives_on(daemon: Daemon) -> None:
    assert daemon.http.get("/api/namespaces/no-such-namespace").status_code == 404
    assert daemon.http.get("/api/namespaces/uts:[1]").status_code == 404
    assert daemon.http.get("/api/namespaces", params={"type": "bogus"}).status_code == 400
    assert daemon.http.get("/api/events", params={"kinds": "exploded"}).status_code == 400
    assert daemon.http.get("/api/events", params={"since": "-4"}).status_code == 422
    assert daemon.http.post("/api/snapshot").status_code == 405
    assert daemon.http.get("/nothing-here").status_code == 404
    tls_hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" * 5
    for garbage in (tls_hello, b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n"):
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(daemon.socket)
            s.sendall(garbage)
            answer = s.recv(200)
        assert answer.startswith(b"HTTP/1.1 4"), answer
    assert daemon.proc.poll() is None and daemon.http.get("/api/status").status_code == 200


def test_a_client_that_leaves_mid_stream_is_forgotten(daemon: Daemon, holders: Callable[..., Holder]) -> None:
    before = daemon.status()["subscribers"]  # other tests' streams may still be open
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(daemon.socket)
        s.sendall(b"GET /api/events HTTP/1.1\r\nHost: nsfs\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 200")
        daemon.wait_for(lambda: daemon.status()["subscribers"] == before + 1, timeout=10)
    holders("--uts")  # an event makes the daemon write to the closed stream
    daemon.wait_for(lambda: daemon.status()["subscribers"] == before, timeout=30)
    assert daemon.http.get("/api/status").status_code == 200


def test_nsfs_watch_prints_events_from_the_daemon(daemon: Daemon, holders: Callable[..., Holder]) -> None:
    before = daemon.status()["subscribers"]  # other tests' streams may still be open
    watch = subprocess.Popen([sys.executable, "-m", "namespacefs", "watch", "-J", "--socket", daemon.socket, "-t", "ipc"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        daemon.wait_for(lambda: daemon.status()["subscribers"] == before + 1, timeout=30)
        h = holders("--ipc")
        inode, ident = h.ns("ipc")
        assert watch.stdout is not None
        deadline = time.monotonic() + 60
        while True:
            assert time.monotonic() < deadline, "no event from nsfs watch"
            ready, _, _ = select.select([watch.stdout], [], [], 1.0)
            if not ready:
                continue
            e = json.loads(watch.stdout.readline())
            assert e["type"] == "ipc"
            if e["event"] == "created" and e["inode"] == inode:
                assert e["id"] == ident and e["pid"] == h.pid
                break
    finally:
        kill_group(watch)


def test_nsfs_serve_rejects_bad_options_without_a_traceback(tmp_path: Path) -> None:
    too_long = str(tmp_path / ("s" * 120 + ".sock"))  # longer than sun_path
    for args, expect in (
        (["--interval", "nan"], "must be a finite number >= 0"),
        (["--interval", "0"], "must be more than 0"),
        (["--netlink-rcvbuf", str(1 << 40)], "between 1 and"),
        (["--listen", "192.0.2.1:9713"], "not a loopback address"),
        (["--listen", "9713", "--token-file", str(tmp_path)], "Is a directory"),
        (["--listen", "9713", "--token-file", str(tmp_path / "no" / "token")], "No such file or directory"),
        (["--socket", too_long], "path too long"),
        (["--socket", "/etc/passwd"], "is not a socket"),
    ):
        result = subprocess.run([sys.executable, "-m", "namespacefs", "serve", *args], capture_output=True, text=True,
                                timeout=120)
        assert result.returncode in (1, 2) and expect in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert not os.path.exists(too_long)


def test_nsfs_watch_rejects_unknown_filters() -> None:
    result = subprocess.run([sys.executable, "-m", "namespacefs", "watch", "-e", "exploded"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1 and "unknown event: exploded" in result.stderr and "Traceback" not in result.stderr


def test_nsfs_watch_without_a_daemon_runs_its_own_event_loop(holders: Callable[..., Holder], tmp_path: Path) -> None:
    watch = subprocess.Popen([sys.executable, "-m", "namespacefs", "watch", "-J", "--no-daemon", "-e", "created", "-t", "uts"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                             env={**os.environ, "NSFS_DB": str(tmp_path / "names.db")})
    try:
        assert watch.stdout is not None
        made: dict[int, int] = {}
        deadline = time.monotonic() + 90
        while True:  # it announces nothing when ready: make namespaces until one is reported
            assert time.monotonic() < deadline and watch.poll() is None, "no event from nsfs watch --no-daemon"
            h = holders("--uts")
            inode, ident = h.ns("uts")
            made[inode] = ident
            ready, _, _ = select.select([watch.stdout], [], [], 2.0)
            if ready:
                e = json.loads(watch.stdout.readline())
                assert e["event"] == "created" and e["type"] == "uts"
                if e["inode"] in made:
                    assert e["id"] == made[e["inode"]]
                    break
    finally:
        kill_group(watch)


def test_containers_and_accounting_endpoints_see_what_the_test_made(daemon: Daemon, holders: Callable[..., Holder]) -> None:
    h = holders("--user", "--map-root-user", "--uts", "--net")
    inode, _ident = h.ns("user")
    daemon.wait_for(lambda: daemon.has(inode))

    def mine() -> list[dict[str, Any]]:
        found = daemon.http.get("/api/containers").json()
        assert found["available"] is True
        return [c for c in found["containers"] if h.pid in c["pids"]]

    # the model may have read the process between its unshare() and its exec of sleep (then it
    # looks like the starter of a container, not its init); the re-read after the exec settles it
    daemon.wait_for(lambda: len(mine()) == 1, timeout=30)
    assert mine()[0]["namespaces"]["uts"] == h.ns("uts")[0]
    acct = daemon.http.get("/api/accounting").json()
    users = {u["inode"]: u for u in acct["user_namespaces"]}
    assert users[inode]["processes"] == 1 and users[inode]["uid_map"] == [[0, 0, 1]]


def test_the_served_json_is_to_dict_also_after_a_partial_update(holders: Callable[..., Holder]) -> None:
    live = Live(scan=scan, interval=600, settle=0, netlink=False)  # only the updates this test asks for
    live.start()
    try:
        assert json.loads(live.snapshot_json()) == json.loads(json.dumps(live.current().to_dict()))
        h = holders("--uts")
        generation = live.generation
        live.touch([h.pid])
        assert live.wait_scan(generation, 30)
        assert live.current().get(h.ns("uts")[0]) is not None
        assert json.loads(live.snapshot_json()) == json.loads(json.dumps(live.current().to_dict()))
    finally:
        live.stop()


def test_a_full_scan_keeps_its_own_start_and_duration_under_a_partial_update(holders: Callable[..., Holder]) -> None:
    """The discovery-duration metric and /api/status full_taken_at describe the full scan, also when
    processes touched while it ran are re-read on top of its result (a re-read takes milliseconds)."""
    h = holders("--uts")
    scans: list[Snapshot] = []
    live: Live | None = None

    def scan_and_touch() -> Snapshot:
        snap = scan(("process",))
        scans.append(snap)
        if live is not None and len(scans) > 1:  # a process event arrives while the full scan runs
            live.touch([h.pid])
            time.sleep(0.2)
        return snap

    live = Live(scan=scan_and_touch, interval=0.3, settle=0, netlink=False)
    live.start()
    try:
        deadline = time.monotonic() + 30
        while live.scans["full"] < 2:
            assert time.monotonic() < deadline, "no full scan"
            time.sleep(0.05)
        durations = live.take_durations()
        assert durations and all(any(d == s.duration for s in scans) for d in durations), (durations, scans)
        assert any(live.full_taken_at == s.taken_at for s in scans)
    finally:
        live.stop()
