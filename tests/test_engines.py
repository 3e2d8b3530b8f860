"""The container engines people run, started by the tests themselves (no image is pulled: a
busybox root filesystem is imported): Docker (a dockerd with its own data-root, exec-root and
socket), Podman with a pod, Kubernetes pods as CRI writes them (runc bundles with its annotations),
`unshare --fork` sandboxes; and targets that containers cannot steal (issue 11: a number is never
a name, a hostname never displaces an engine's name, twins are ambiguous)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import environment, nsfs
from namespacefs import containers, core
from namespacefs.containers import ContainerTree, docker
from namespacefs.model import Snapshot
from runtimes import (
    IMAGE,
    Dockerd,
    Podman,
    RootlessPodman,
    Started,
    busybox_tar,
    children,
    descendants,
    gone,
    rootfs,
    start_group,
    stop,
    wait_for,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="engines need root")


@pytest.fixture(autouse=True, scope="module")
def no_daemon() -> Iterator[None]:
    """Scans of our own: a `nsfs serve` someone runs on this machine must not answer for us."""
    with environment("NSFS_NO_DAEMON", "1"):
        yield


def _tree(roots: list[tuple[str, str]] | None = None) -> tuple[Snapshot, ContainerTree]:
    snap = core.snapshot(("process", "bindmount"))
    return snap, containers.find(snap, oci_roots=roots)


def _alive(pid: int) -> bool:
    return not gone(pid)


# --- Docker --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")  # one per session (only this module uses it), gone before later modules scan the host
def dockerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dockerd]:
    d = Dockerd(tmp_path_factory.mktemp("dockerd"))
    try:
        why = d.start()
        if why:
            pytest.skip(f"no dockerd here: {why}")
        tar = busybox_tar(d.dir)
        imported = d.docker("import", str(tar), IMAGE, check=False)
        if imported.returncode != 0:
            pytest.skip(f"docker import failed: {imported.stderr.strip()}")
        for name, hostname, labels in (("web1", "webhost", ["com.docker.compose.project=shop",
                                                            "com.docker.compose.service=web"]),
                                       ("db1", "dbhost", [])):
            args = [a for label in labels for a in ("-l", label)]
            ran = d.docker("run", "-d", "--name", name, "--hostname", hostname, "--network", "none", *args,
                           IMAGE, "sleep", "100000", check=False)
            if ran.returncode != 0:
                pytest.skip(f"docker cannot run a container here: {ran.stderr.strip()}")
        yield d
    finally:
        d.stop()


def _docker_pid(d: Dockerd, name: str) -> int:
    return int(d.docker("inspect", "-f", "{{.State.Pid}}", name).stdout)


def _docker_id(d: Dockerd, name: str) -> str:
    return d.docker("inspect", "-f", "{{.Id}}", name).stdout.strip()


def test_docker_containers_are_named_as_docker_ps_names_them(dockerd: Dockerd) -> None:
    _, tree = _tree()
    web = tree.of_pid(_docker_pid(dockerd, "web1"))
    assert web is not None
    assert (web.path, web.name, web.engine, web.engine_id) == ("/web1", "web1", "docker", _docker_id(dockerd, "web1"))
    assert web.labels["com.docker.compose.project"] == "shop" and web.labels["com.docker.compose.service"] == "web"
    assert web.name_from == "engine"
    listed = json.loads(nsfs("containers", "-J").stdout)
    assert {c["path"]: c["engine"] for c in listed["containers"]}["/db1"] == "docker"


def test_docker_container_is_entered_shown_and_killed_by_its_name(dockerd: Dockerd) -> None:
    assert nsfs("enter", "web1", "--", "hostname").stdout.strip() == "webhost"
    web = _docker_pid(dockerd, "web1")
    listed = {ns["inode"] for ns in json.loads(nsfs("ls", "web1", "-J").stdout)["namespaces"]}
    assert listed == {os.stat(f"/proc/{web}/ns/{t}").st_ino for t in ("mnt", "uts", "ipc", "pid", "net")}
    pin = dockerd.dir / f"web1-net-{os.getpid()}"
    pinned = nsfs("pin", "web1", "-t", "net", str(pin)).stdout
    try:
        assert f"net:[{os.stat(f'/proc/{web}/ns/net').st_ino}]" in pinned
    finally:
        nsfs("unpin", str(pin))
    shown = nsfs("show", "web1").stdout
    assert "docker" in shown and _docker_id(dockerd, "web1") in shown and "sleep 100000" in shown
    data = json.loads(nsfs("show", "web1", "-J").stdout)
    assert data["engine"] == "docker" and data["processes"][0]["pid"] == _docker_pid(dockerd, "web1")
    dockerd.docker("run", "-d", "--name", "victim", "--network", "none", IMAGE, "sleep", "100000")
    victim = _docker_pid(dockerd, "victim")
    others = [_docker_pid(dockerd, "web1"), _docker_pid(dockerd, "db1")]
    engine = [p for p in descendants(dockerd.proc.pid if dockerd.proc else 0)] + [dockerd.proc.pid]  # type: ignore[union-attr]
    killed = nsfs("kill", "victim").stdout
    assert "/victim" in killed and f"init {victim}" in killed  # it says exactly what it hit
    wait_for(lambda: dockerd.docker("inspect", "-f", "{{.State.Running}}", "victim").stdout.strip() == "false",
             timeout=30, what="docker to see victim exit")
    assert all(_alive(p) for p in others + engine)
    dockerd.docker("rm", "-f", "victim")


def test_a_container_naming_its_host_after_a_docker_container_never_takes_its_name(
        dockerd: Dockerd, started: Started) -> None:
    thief = _unshare(started, "late1")  # first: its init pid is the lower one
    dockerd.docker("run", "-d", "--name", "late1", "--network", "none", IMAGE, "sleep", "100000")
    try:
        late = _docker_pid(dockerd, "late1")
        assert thief < late
        dry = nsfs("kill", "late1", "--dry-run").stdout
        assert f"    {late} " in dry and f"    {thief} " not in dry
        listed = {c["path"]: c for c in json.loads(nsfs("containers", "-J").stdout)["containers"]}
        assert listed["/late1"]["engine"] == "docker" and listed["/late1"]["init"] == late
        assert listed[f"/late1.{thief}"]["name_from"] == "hostname"
    finally:
        dockerd.docker("rm", "-f", "late1")


def test_docker_names_come_from_the_data_root_when_the_api_cannot_answer(dockerd: Dockerd, tmp_path: Path) -> None:
    snap = core.snapshot(("process",))
    (found,) = [d for d in docker.daemons(snap) if d.pid == (dockerd.proc.pid if dockerd.proc else None)]
    assert (found.data_root, found.exec_root, found.sockets) == (dockerd.data_root, dockerd.exec_root,
                                                                 (dockerd.socket,))
    by_api = docker.containers(found)
    no_api = docker.Daemon(found.data_root, found.exec_root, (str(tmp_path / "no.sock"),), found.pid)
    by_files = docker.containers(no_api)
    stopped = docker.Daemon(found.data_root, found.exec_root, found.sockets, None)
    assert {k: v.name for k, v in by_api.items()} == {k: v.name for k, v in by_files.items()} == {
        k: v.name for k, v in docker.containers(stopped).items()}
    assert by_files[_docker_id(dockerd, "web1")].labels["com.docker.compose.project"] == "shop"


class HostilePeer:
    """A unix socket server we run that accepts and then hangs, or answers garbage."""

    def __init__(self, path: Path, answer: bytes | None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.answer, self.conns = answer, []  # type: list[socket.socket]
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                self.conns.append(conn)
                if self.answer is not None:
                    conn.recv(4096)
                    conn.sendall(self.answer)
                    conn.close()

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


@pytest.mark.parametrize("answer", [None, b"HTTP/1.0 200 OK\r\n\r\n{not json", b"\x00\xffgarbage\r\n\r\n",
                                    b"HTTP/1.0 200 OK\r\n\r\n[{\"Id\": 5}]"])
def test_a_docker_socket_that_hangs_or_answers_garbage_costs_half_a_second(
        dockerd: Dockerd, tmp_path: Path, answer: bytes | None, caplog: pytest.LogCaptureFixture) -> None:
    peer = HostilePeer(tmp_path / "hostile.sock", answer)
    try:
        daemon = docker.Daemon(dockerd.data_root, dockerd.exec_root, (str(tmp_path / "hostile.sock"),), 1)
        with caplog.at_level(logging.WARNING, "namespacefs.containers"):
            started = time.monotonic()
            found = docker.containers(daemon)
            took = time.monotonic() - started
        assert took < docker.API_TIMEOUT + 0.2
        assert _docker_id(dockerd, "web1") in found  # the listing is there, from the data-root
        started = time.monotonic()
        assert docker.containers(daemon) == found  # asked again (another tree): no second wait
        assert time.monotonic() - started < 0.3
        warnings = [r.getMessage() for r in caplog.records if "Docker API" in r.getMessage()]
        assert len(warnings) == 1 and "\n" not in warnings[0]
    finally:
        peer.close()


def test_a_hostile_docker_socket_costs_nsfs_one_warning_and_no_listing(
        dockerd: Dockerd, tmp_path: Path, started: Started) -> None:
    """A process called dockerd (a script of ours) whose -H socket hangs: `nsfs containers` still
    lists every container by its Docker name, with one warning line, no traceback."""
    peer = HostilePeer(tmp_path / "hang.sock", None)
    fake = tmp_path / "dockerd"  # a script's comm is its file's name
    fake.write_text("#!/bin/sh\nsleep 1000\n")
    fake.chmod(0o755)
    proc = start_group(started, [str(fake), "-H", f"unix://{tmp_path}/hang.sock", "--data-root", dockerd.data_root])
    try:
        wait_for(lambda: children(proc.pid), what="the fake dockerd")
        result = nsfs("containers", "-J")
        listed = {c["path"]: c for c in json.loads(result.stdout)["containers"]}
        assert listed["/web1"]["engine"] == "docker"
        warnings = [ln for ln in result.stderr.splitlines() if "Docker API" in ln]
        assert len(warnings) == 1 and "hang.sock" in warnings[0] and "did not answer in time" in warnings[0]
    finally:
        peer.close()


@pytest.fixture
def long_table(tmp_path: Path) -> Iterator[None]:
    """The host's mount table made longer than 64 KiB (private tmpfs mounts, undone after)."""
    from test_longmounts import TABLE, _count_for, fill

    where = tmp_path / "long"
    where.mkdir()
    made: list[str] = []
    try:
        made = fill(str(where), _count_for(TABLE))
        yield
    finally:
        for point in reversed(made):
            subprocess.run(["umount", "-l", point], capture_output=True)


def test_docker_and_ip_netns_namespaces_are_found_on_a_long_mount_table_by_their_short_names(
        dockerd: Dockerd, long_table: None) -> None:
    netns = f"nsfs-web-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        snap = core.snapshot(("process", "bindmount"))
        web_net = os.stat(f"/proc/{_docker_pid(dockerd, 'web1')}/ns/net").st_ino
        holders = [h.path for h in snap.get(web_net).holders if h.kind == "bindmount"]  # type: ignore[union-attr]
        assert holders and holders[0].startswith(f"{dockerd.exec_root}/netns/")
        ip_net = os.stat(f"/run/netns/{netns}").st_ino
        # (seen in every mount namespace /run/netns propagates to)
        assert {h.path for h in snap.get(ip_net).holders} == {f"/run/netns/{netns}"}  # type: ignore[union-attr]
        assert json.loads(nsfs("show", netns, "-J").stdout)["inode"] == ip_net
        entered = nsfs("enter", netns, "--", "readlink", "/proc/self/ns/net").stdout.strip()
        assert entered == f"net:[{ip_net}]"
        assert ": lo:" in nsfs("enter", netns, "--", "ip", "link").stdout  # as `ip netns exec` would
        assert json.loads(nsfs("show", "net-web1", "-J").stdout)["inode"] == web_net
        assert nsfs("enter", "web1", "-n", "--", "readlink", "/proc/self/ns/net").stdout.strip() == f"net:[{web_net}]"
        listed = nsfs("ls", "-t", "net").stdout
        line = next(ln for ln in listed.splitlines() if str(ip_net) in ln)
        assert f"/run/netns/{netns}" in line and "kthreadd" not in line  # its holder, not a reader
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)


def _in_api_and_fuse(where: Path, path: str, engine: str, net: int, ns_name: str) -> None:
    """The container is listed under its path by the HTTP API (a `nsfs serve` of our own) and its
    net namespace carries ns_name there and in the FUSE view (a `nsfs mount` of our own)."""
    from test_fs import serve, stop  # the real filesystem server
    from test_service import Daemon  # the real HTTP service

    api = Daemon(where)
    try:
        def listed() -> bool:
            found = api.http.get("/api/containers").json()
            return any(c["path"] == path and c["engine"] == engine for c in found.get("containers", []))
        api.wait_for(listed)
        assert api.http.get(f"/api/namespaces/{ns_name}").json()["inode"] == net
        one = api.http.get(f"/api/containers/{path.rsplit('/', 1)[-1]}").json()  # by its name
        assert (one["path"], one["engine"], one["namespaces"]["net"]["inode"]) == (path, engine, net)
        assert api.http.get("/api/containers/4999999").status_code == 404  # a number is no name
    finally:
        api.stop()
    mountpoint = where / "fs"
    mountpoint.mkdir()
    server = serve(mountpoint, "--db", str(where / "fs-names.db"))
    try:
        assert (mountpoint / "net" / str(net) / "name").read_text().strip() == ns_name
    finally:
        stop(server, mountpoint)


def test_docker_names_in_the_http_api_and_the_fuse_view(dockerd: Dockerd, tmp_path: Path) -> None:
    web_net = os.stat(f"/proc/{_docker_pid(dockerd, 'web1')}/ns/net").st_ino
    _in_api_and_fuse(tmp_path, "/web1", "docker", web_net, "net-web1")


# --- Podman --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")  # one per session (only this module uses it), gone before later modules scan the host
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    p = Podman(tmp_path_factory.mktemp("podman"))
    try:
        why = p.start(busybox_tar(p.dir))
        if why:
            pytest.skip(why)
        p.podman("pod", "create", "--name", "pod1", "--network", "none")
        for name, pod in (("pod1-web", "pod1"), ("pod1-db", "pod1"), ("solo", None)):
            args = ["--pod", pod] if pod else ["--network", "none"]
            p.podman("run", "-d", "--name", name, *args, f"localhost/{IMAGE}", "sleep", "100000")
        yield p
    finally:
        p.stop()


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rpartition(")")[2].split()[1])


def _podman_pid(p: Podman, name: str) -> int:
    return int(p.podman("inspect", "-f", "{{.State.Pid}}", name).stdout)


def test_podman_runtime(podman: Podman) -> None:
    if podman.why_not_crun:
        print(f"crun cannot run here ({podman.why_not_crun}); podman uses {podman.runtime}")
    assert podman.runtime in ("crun", "runc")


def test_a_podman_pod_holds_its_infra_and_members_named_as_podman_names_them(podman: Podman) -> None:
    _, tree = _tree()
    pod_id = podman.podman("pod", "inspect", "-f", "{{.Id}}", "pod1").stdout.strip()
    infra_id = podman.podman("pod", "inspect", "-f", "{{.InfraContainerID}}", "pod1").stdout.strip()
    infra_name = podman.podman("inspect", "-f", "{{.Name}}", infra_id).stdout.strip()
    pod = tree.get("/pod1")
    assert pod is not None and pod.group and (pod.engine, pod.engine_id) == ("podman", pod_id)
    assert {c.name for c in pod.children} == {"pod1-web", "pod1-db", infra_name}
    web = tree.of_pid(_podman_pid(podman, "pod1-web"))
    assert web is not None and web.path == "/pod1/pod1-web" and web.labels["podman.pod"] == "pod1"
    solo = tree.of_pid(_podman_pid(podman, "solo"))
    assert solo is not None and (solo.path, solo.engine) == ("/solo", "podman")
    assert set(pod.own_namespaces(tree.root)) >= {"net", "ipc", "uts"}
    names = containers.engine_names(core.snapshot(("process",)), tree)
    assert names[pod.namespaces["net"]] == "pod1"  # the shared namespaces are the pod's


def test_a_pod_is_renamed_as_a_whole(podman: Podman, tmp_path: Path) -> None:
    db = str(tmp_path / "names.db")
    nsfs("containers", "--db", db, "--rename", "pod1", "storefront")
    listed = {c["path"] for c in json.loads(nsfs("containers", "--db", db, "-J").stdout)["containers"]}
    assert {"/storefront", "/storefront/pod1-web"} <= listed and "/pod1" not in listed


def test_podman_containers_are_entered_shown_and_killed_precisely(podman: Podman) -> None:
    assert nsfs("enter", "pod1-web", "--", "hostname").stdout.strip() == "pod1"  # the pod's uts
    data = json.loads(nsfs("show", "pod1-db", "-J").stdout)
    assert data["engine"] == "podman" and data["pod"]["name"] == "pod1"
    survivors = [_podman_pid(podman, n) for n in ("pod1-web", "solo")]
    infra = int(podman.podman("inspect", "-f", "{{.State.Pid}}",
                              podman.podman("pod", "inspect", "-f", "{{.InfraContainerID}}", "pod1").stdout.strip()).stdout)
    conmons = [_ppid(p) for p in [*survivors, infra]]  # the engine's processes of the others
    db = _podman_pid(podman, "pod1-db")
    killed = nsfs("kill", "pod1-db").stdout
    assert "/pod1/pod1-db" in killed and f"init {db}" in killed
    wait_for(lambda: podman.podman("inspect", "-f", "{{.State.Status}}", "pod1-db").stdout.strip() == "exited",
             timeout=30, what="podman to see pod1-db exit")
    assert all(_alive(p) for p in [*survivors, infra])
    assert all(_alive(p) for p in conmons)


def test_podman_names_in_the_http_api_and_the_fuse_view(podman: Podman, tmp_path: Path) -> None:
    net = os.stat(f"/proc/{_podman_pid(podman, 'pod1-web')}/ns/net").st_ino
    _in_api_and_fuse(tmp_path, "/pod1/pod1-web", "podman", net, "net-pod1")  # the pod's net namespace


def test_a_pods_namespaces_keep_its_name_when_its_infra_dies(podman: Podman) -> None:
    podman.podman("pod", "create", "--name", "keep", "--network", "none")
    podman.podman("run", "-d", "--name", "keep-app", "--pod", "keep", f"localhost/{IMAGE}", "sleep", "100000")
    app = _podman_pid(podman, "keep-app")
    net = os.stat(f"/proc/{app}/ns/net").st_ino

    def name_of_net() -> str | None:
        snap = core.snapshot(("process",))
        return snap.get(net).name if snap.get(net) else None  # type: ignore[union-attr]

    assert name_of_net() == "net-keep"
    infra = int(podman.podman("inspect", "-f", "{{.State.Pid}}",
                              podman.podman("pod", "inspect", "-f", "{{.InfraContainerID}}", "keep").stdout.strip()).stdout)
    os.kill(infra, signal.SIGKILL)  # a process podman started for the test's own pod
    wait_for(lambda: gone(infra), what="the infra to die")
    assert _alive(app) and name_of_net() == "net-keep"
    podman.podman("pod", "rm", "-f", "-t", "0", "keep", check=False)


# --- Kubernetes, as CRI leaves it: runc bundles with its annotations ----------------------------


def _runc_bundle(tmp: Path, started: Started, name: str, annotations: dict[str, str], args: list[str],
                 join_net: int | None = None) -> int:
    bundle = tmp / f"bundle-{name}"
    rootfs(bundle / "rootfs")
    subprocess.run(["runc", "spec"], cwd=bundle, check=True, capture_output=True)
    spec = json.loads((bundle / "config.json").read_text())
    spec["process"].update(terminal=False, args=args)
    spec["root"]["readonly"] = False
    spec["annotations"] = annotations
    spaces = [n for n in spec["linux"]["namespaces"] if n["type"] != "cgroup"]
    if join_net:
        link = {"network": "net", "ipc": "ipc", "uts": "uts"}
        spaces = [{**n, "path": f"/proc/{join_net}/ns/{link[n['type']]}"} if n["type"] in link else n for n in spaces]
    spec["linux"]["namespaces"] = spaces
    spec["mounts"] = [m for m in spec["mounts"] if m["type"] != "cgroup"]
    cid = f"nsfs-k8s-{name}-{uuid.uuid4().hex[:6]}"
    spec["linux"]["cgroupsPath"] = f"/{cid}"
    (bundle / "config.json").write_text(json.dumps(spec))
    state = tmp / "runc-state"
    from runtimes import Runc

    started.runcs.append(Runc(state, cid, 0, f"/{cid}"))
    log = tmp / f"runc-{name}.log"
    with open(log, "w") as err:  # not a pipe: the detached container would hold it open
        result = subprocess.run(["runc", "--root", str(state), "run", "-d", "--bundle", str(bundle), cid],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, timeout=60)
    assert result.returncode == 0, log.read_text()
    return int(json.loads((state / cid / "state.json").read_text())["init_process_pid"])


def test_kubernetes_pods_from_the_annotations_cri_writes(tmp_path: Path) -> None:
    box = Started()
    try:
        sandbox_id = uuid.uuid4().hex * 2
        pod = {"io.kubernetes.cri.sandbox-id": sandbox_id, "io.kubernetes.cri.sandbox-name": "shop-7d9",
               "io.kubernetes.cri.sandbox-namespace": "default", "io.kubernetes.cri.sandbox-uid": str(uuid.uuid4())}
        sandbox = _runc_bundle(tmp_path, box, "pause", {**pod, "io.kubernetes.cri.container-type": "sandbox"},
                               ["sleep", "100000"])
        app = _runc_bundle(tmp_path, box, "nginx", {**pod, "io.kubernetes.cri.container-type": "container",
                                                    "io.kubernetes.cri.container-name": "nginx"},
                           ["sleep", "100000"], join_net=sandbox)
        _, tree = _tree([(str(tmp_path / "runc-state"), "runc")])
        member = tree.of_pid(app)
        assert member is not None and member.path == "/default/shop-7d9/nginx" and member.engine == "kubernetes"
        assert tree.of_pid(sandbox).path == "/default/shop-7d9/sandbox"  # type: ignore[union-attr]
        assert tree.get("/default/shop-7d9").engine_id == sandbox_id  # type: ignore[union-attr]
        env = dict(os.environ, NSFS_OCI_ROOTS=str(tmp_path / "runc-state"))
        assert nsfs("enter", "default/shop-7d9/nginx", "--", "cat", "/proc/self/comm", env=env).stdout.strip() == "cat"
        shown = json.loads(nsfs("show", "/default/shop-7d9/nginx", "-J", env=env).stdout)
        assert shown["pod"]["name"] == "shop-7d9" and shown["engine"] == "kubernetes"
        assert "nginx" in nsfs("kill", "/default/shop-7d9/nginx", env=env).stdout
        wait_for(lambda: gone(app), what="nginx to die")
        assert _alive(sandbox)
        nginx_id = tree.of_pid(app).engine_id  # type: ignore[union-attr]
        state = subprocess.run(["runc", "--root", str(tmp_path / "runc-state"), "state", nginx_id],
                               capture_output=True, text=True)
        assert json.loads(state.stdout)["status"] == "stopped"  # the runtime reports it exited
    finally:
        stop(box)


# --- LXC ---------------------------------------------------------------------------------------


def test_an_lxc_container_is_named_entered_and_killed_by_its_name(tmp_path: Path) -> None:
    if subprocess.run(["which", "lxc-start"], capture_output=True).returncode != 0:
        pytest.skip("lxc is not installed (bootstrap.sh installs it)")
    name = f"nsfs-lxc-{os.getpid()}"
    rootfs(tmp_path / "rootfs")
    (tmp_path / "config").write_text(f"lxc.uts.name = {name}-host\nlxc.rootfs.path = dir:{tmp_path}/rootfs\n"
                                     "lxc.net.0.type = empty\nlxc.init.cmd = /bin/sleep 100000\n"
                                     "lxc.mount.auto = proc:mixed sys:ro\n")
    started = subprocess.run(["lxc-start", "-P", str(tmp_path), "-n", name, "-f", str(tmp_path / "config"), "-d",
                              "-o", str(tmp_path / "lxc.log")], capture_output=True, text=True, timeout=60)
    if started.returncode != 0:
        pytest.skip(f"lxc-start cannot run a container here: {started.stderr.strip()[-300:]}")
    try:
        def init() -> int | None:
            out = subprocess.run(["lxc-info", "-P", str(tmp_path), "-n", name, "-p", "-H"], capture_output=True, text=True)
            return int(out.stdout) if out.stdout.strip().isdigit() else None
        pid = wait_for(init, what="the LXC container's init")
        _, tree = _tree()
        c = tree.of_pid(pid)
        assert c is not None and (c.path, c.engine, c.engine_id) == (f"/{name}", "lxc", name)
        assert nsfs("enter", name, "--", "hostname").stdout.strip() == f"{name}-host"
        assert f"/{name}" in nsfs("kill", name).stdout
        def stopped() -> bool:  # (a container started from a config file alone is forgotten once stopped)
            out = subprocess.run(["lxc-info", "-P", str(tmp_path), "-n", name, "-s"], capture_output=True, text=True)
            return "STOPPED" in out.stdout or "doesn't exist" in out.stdout + out.stderr
        wait_for(stopped, timeout=30, what="LXC to see it stopped")
        assert gone(pid)
    finally:
        subprocess.run(["lxc-stop", "-P", str(tmp_path), "-n", name, "-k"], capture_output=True, timeout=60)


# --- sandboxes and targets that containers cannot steal (issue 11) --------------------------------


def _unshare(started: Started, hostname: str, fork: bool = True) -> int:
    """A sandbox with its own uts (and pid) namespace; the host pid of its sleep."""
    argv = ["unshare", "-u", "-m", *(["-p", "--fork", "--mount-proc"] if fork else []), "sh", "-c",
            f"hostname {hostname}; exec sleep 100000"]
    proc = start_group(started, argv)

    def sleeper() -> int | None:
        for pid in [proc.pid, *descendants(proc.pid)]:
            with contextlib.suppress(OSError), open(f"/proc/{pid}/comm") as f:
                if f.read().strip() == "sleep":
                    return pid
        return None
    return wait_for(sleeper, what="the sandbox's sleep")


@pytest.fixture
def started() -> Iterator[Started]:
    box = Started()
    yield box
    stop(box)


def test_an_unshare_fork_sandbox_is_one_container(started: Started) -> None:
    sleeper = _unshare(started, f"solo-{os.getpid()}")
    _, tree = _tree()
    c = tree.of_pid(sleeper)
    assert c is not None and c.path == f"/solo-{os.getpid()}" and tree.parent(c) is tree.root
    unshare = started.groups[-1].pid
    assert tree.of_pid(unshare) == c and not c.children  # the forker is in it, nothing nested
    report = json.loads(nsfs("kill", c.path, "-J").stdout)
    assert sorted(report["pids"]) == sorted([unshare, sleeper]) and not report["gone"] and not report["left"]


def test_a_number_is_never_a_name(started: Started) -> None:
    sleeper = _unshare(started, "4999999")
    missing = nsfs("kill", "4999999", check=False)
    assert missing.returncode == 1 and "no process 4999999" in missing.stderr
    assert nsfs("show", "²", check=False).returncode == 1
    assert _alive(sleeper)


def test_a_hostname_never_takes_an_engine_or_user_given_name(started: Started, tmp_path: Path) -> None:
    db = str(tmp_path / "names.db")
    thief = _unshare(started, f"named-{os.getpid()}")  # first (the lower init pid), then the one named so
    victim = _unshare(started, f"victim-{os.getpid()}")
    assert thief < victim
    nsfs("containers", "--db", db, "--rename", f"/victim-{os.getpid()}", f"named-{os.getpid()}")
    dry = nsfs("kill", "--db", db, f"named-{os.getpid()}", "--dry-run").stdout
    assert str(victim) in dry and str(thief) not in dry
    listed = {c["path"]: c["init"] for c in json.loads(nsfs("containers", "--db", db, "-J").stdout)["containers"]}
    assert listed[f"/named-{os.getpid()}"] == victim and listed[f"/named-{os.getpid()}.{thief}"] == thief


def test_twins_are_ambiguous_and_kill_twice_never_kills_both(started: Started) -> None:
    a, b = _unshare(started, "twin"), _unshare(started, "twin")
    refused = nsfs("kill", "twin", check=False)
    assert refused.returncode == 1 and "ambiguous" in refused.stderr
    again = nsfs("kill", "twin", check=False)
    assert again.returncode == 1 and _alive(a) and _alive(b)
    near = nsfs("kill", "twim", check=False)
    assert near.returncode == 1 and "did you mean" in near.stderr


# --- rootless Podman ----------------------------------------------------------------------------


@pytest.fixture(scope="module")  # one per session (only this module uses it), gone before later modules scan the host
def rootless(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RootlessPodman]:
    p = RootlessPodman(tmp_path_factory.mktemp("rootless"))
    try:
        why = p.start(busybox_tar(p.dir))
        if why:
            pytest.skip(why)
        for name in ("rl-web", "rl-db"):
            p.podman("run", "-d", "--name", name, "--hostname", f"{name}-host", "--network", "none",
                     f"localhost/{IMAGE}", "sleep", "100000")
        yield p
    finally:
        p.stop()


def _rootless_pid(p: RootlessPodman, name: str) -> int:
    return int(p.podman("inspect", "-f", "{{.State.Pid}}", name).stdout)


def test_rootless_podman_containers_are_named_inside_the_users_pause_container(rootless: RootlessPodman) -> None:
    _, tree = _tree()
    web = tree.of_pid(_rootless_pid(rootless, "rl-web"))
    assert web is not None and (web.name, web.engine) == ("rl-web", "podman")
    parent = tree.parent(web)
    assert parent is not None and parent.name == f"podman-{rootless.user}" and rootless.pause_pid() in parent.pids
    assert web.path == f"/podman-{rootless.user}/rl-web"
    assert nsfs("enter", "rl-web", "--", "hostname").stdout.strip() == "rl-web-host"
    shown = json.loads(nsfs("show", "rl-web", "-J").stdout)
    assert (shown["engine"], shown["parent"]) == ("podman", f"/podman-{rootless.user}")


def test_rootless_podman_names_in_the_http_api_and_the_fuse_view(rootless: RootlessPodman, tmp_path: Path) -> None:
    net = os.stat(f"/proc/{_rootless_pid(rootless, 'rl-web')}/ns/net").st_ino
    _in_api_and_fuse(tmp_path, f"/podman-{rootless.user}/rl-web", "podman", net, "net-rl-web")


def test_a_rootless_container_is_killed_precisely(rootless: RootlessPodman) -> None:
    rootless.podman("run", "-d", "--name", "rl-victim", "--network", "none", f"localhost/{IMAGE}", "sleep", "100000")
    victim = _rootless_pid(rootless, "rl-victim")
    others = [_rootless_pid(rootless, "rl-web"), _rootless_pid(rootless, "rl-db"), rootless.pause_pid() or 0]
    assert "rl-victim" in nsfs("kill", "rl-victim").stdout
    wait_for(lambda: gone(victim), what="rl-victim to die")
    wait_for(lambda: rootless.podman("inspect", "-f", "{{.State.Status}}", "rl-victim").stdout.strip() == "exited",
             timeout=30, what="podman to see rl-victim exit")
    assert all(_alive(p) for p in others)
