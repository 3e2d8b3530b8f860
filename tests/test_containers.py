"""Containers found in real snapshots: runc, bubblewrap and systemd-nspawn containers and one nested
inside the runc one are recognised, named by their engines and arranged as a tree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import nsfs
from namespacefs import containers, core
from namespacefs.containers import ContainerTree, Identity, browser, bwrap, nspawn, oci, systemd
from namespacefs.containers.candidate import Candidate
from namespacefs.model import Snapshot
from runtimes import Started, nsfs_env, start_bwrap, start_nspawn, start_runc, stop, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="containers need root")

NESTED = "unshare -u -n sh -c 'hostname inner; exec sleep 1000' & exec sleep 1000"


@dataclass
class World:
    tmp: Path
    runc_state: Path
    runc_id: str
    runc_init: int
    inner: int
    bwrap_init: int
    nspawn_init: int
    machine: str
    sandbox: str


def _inner_pid(runc_init: int) -> int:
    """The nested container's process: the runc init's child that has its own uts namespace."""
    def find() -> int | None:
        with open(f"/proc/{runc_init}/task/{runc_init}/children") as f:
            kids = f.read().split()
        for kid in kids:
            if os.stat(f"/proc/{kid}/ns/uts").st_ino != os.stat(f"/proc/{runc_init}/ns/uts").st_ino:
                with open(f"/proc/{kid}/comm") as f:
                    if f.read().strip() == "sleep":
                        return int(kid)
        return None
    return wait_for(find, what="the nested container")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("containers")
    box = Started()
    try:
        sandbox = f"nsfs-sandbox-{os.getpid()}"
        machine = f"nsfs-machine-{os.getpid()}"
        runc = start_runc(tmp, box, "web", ["sh", "-c", NESTED], caps_all=True)
        inner = _inner_pid(runc.pid)
        _, bw = start_bwrap(box, sandbox, ["sleep", "1000"])
        _, ns = start_nspawn(tmp, box, machine, ["/bin/sleep", "1000"])
        yield World(tmp, runc.state, runc.id, runc.pid, inner, bw, ns, machine, sandbox)
    finally:
        stop(box)


def _find(world: World) -> tuple[Snapshot, ContainerTree]:
    snap = core.snapshot(("process",))
    return snap, containers.find(snap, oci_roots=[(str(world.runc_state), "runc")])


def test_runc_container_is_recognised_by_its_state_directory(world: World) -> None:
    _, tree = _find(world)
    c = tree.of_pid(world.runc_init)
    assert c is not None and c.init == world.runc_init
    assert (c.engine, c.engine_id, c.name, c.path) == ("runc", world.runc_id, world.runc_id, f"/{world.runc_id}")
    assert c.namespaces["net"] == os.stat(f"/proc/{world.runc_init}/ns/net").st_ino
    assert tree.parent(c) is tree.root  # runc's init is reparented to the host's


def test_nested_container_lives_inside_its_parent_and_is_named_by_its_hostname(world: World) -> None:
    _, tree = _find(world)
    outer = tree.of_pid(world.runc_init)
    inner = tree.of_pid(world.inner)
    assert outer is not None and inner is not None
    assert inner.path == f"{outer.path}/inner"
    assert inner in outer.children and tree.parent(inner) == outer
    assert set(inner.own_namespaces(outer)) == {"uts", "net"}
    assert world.inner in outer.all_pids and world.inner not in outer.pids
    assert tree.lookup(f"{outer.path}/inner") == [inner]


def test_bubblewrap_sandbox_is_named_by_its_hostname(world: World) -> None:
    _, tree = _find(world)
    c = tree.of_pid(world.bwrap_init)
    assert c is not None and c.init == world.bwrap_init
    assert (c.engine, c.name) == ("bwrap", world.sandbox)
    assert tree.parent(c) is tree.root
    assert set(c.own_namespaces(tree.root)) >= {"mnt", "uts", "ipc", "pid", "net", "user", "cgroup"}


def test_systemd_nspawn_machine_is_named_by_its_machine_name(world: World) -> None:
    _, tree = _find(world)
    c = tree.of_pid(world.nspawn_init)
    assert c is not None
    assert (c.engine, c.name, c.engine_id, c.path) == ("systemd-nspawn", world.machine, world.machine, f"/{world.machine}")


def test_host_is_the_root_and_every_process_is_in_exactly_one_container(world: World) -> None:
    snap, tree = _find(world)
    assert tree.root.path == "/" and tree.root.engine == "host"
    seen: list[int] = [p for c in tree for p in c.pids]
    assert len(seen) == len(set(seen))
    assert os.getpid() in tree.root.pids
    for c in tree:  # every process of a container shares its namespaces (kernel threads count as the host's)
        for pid in c.pids:
            proc = snap.processes[pid]
            if proc.ppid != 2 and all(t in proc.namespaces for t in c.namespaces):
                assert {t: proc.namespaces[t] for t in c.namespaces} == dict(c.namespaces)


def test_engine_names_name_the_namespaces_a_container_does_not_share(world: World) -> None:
    snap, tree = _find(world)
    names = containers.engine_names(snap, tree)
    runc_net = os.stat(f"/proc/{world.runc_init}/ns/net").st_ino
    bwrap_uts = os.stat(f"/proc/{world.bwrap_init}/ns/uts").st_ino
    host_net = os.stat("/proc/self/ns/net").st_ino
    assert names[runc_net] == world.runc_id
    assert names[bwrap_uts] == world.sandbox
    assert host_net not in names


def test_oci_state_is_read_from_extra_roots_only_when_asked(world: World) -> None:
    assert world.runc_init in oci.scan([(str(world.runc_state), "runc")])
    assert world.runc_init not in oci.scan([])


def test_containers_command_shows_the_tree_and_json(world: World, tmp_path: Path) -> None:
    env = nsfs_env(world.runc_state, tmp_path / "names.db")
    out = nsfs("containers", env=env).stdout
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["NAME", "ENGINE", "ID"]
    runc_line = next(i for i, ln in enumerate(lines) if world.runc_id in ln.split()[0])
    assert "─inner " in lines[runc_line + 1]  # the nested one, indented below its parent
    assert any(world.machine in ln and "systemd-nspawn" in ln for ln in lines)
    data = json.loads(nsfs("containers", "-J", env=env).stdout)
    flat = {c["path"]: c for c in data["containers"]}
    runc = flat[f"/{world.runc_id}"]
    assert runc["engine"] == "runc" and runc["init"] == world.runc_init
    assert flat[f"/{world.runc_id}/inner"]["pids"] == [world.inner]
    assert [k["path"] for k in data["root"]["children"] if k["path"] == runc["path"]]
    listed = nsfs("containers", "-l", "-r", "-n", "-o", "PATH,ENGINE", env=env).stdout.splitlines()
    assert f"/{world.runc_id}/inner unknown" in listed
    assert not (tmp_path / "names.db").exists()  # listing creates no names database


def test_containers_command_rejects_bad_input_clearly(world: World, tmp_path: Path) -> None:
    env = nsfs_env(world.runc_state, tmp_path / "names.db")
    bad = nsfs("containers", "-o", "NOPE", check=False, env=env)
    assert bad.returncode == 1 and "unknown column" in bad.stderr
    missing = nsfs("kill", "/no/such/container", "--dry-run", check=False, env=env)
    assert missing.returncode == 1 and "no container" in missing.stderr
    host = nsfs("kill", "/", "--dry-run", check=False, env=env)
    assert host.returncode == 1 and "host" in host.stderr
    for bad_name in ("a/b", "a b", "", "x" * 81):  # a name is stored exactly as it is shown
        refused = nsfs("containers", "--rename", f"/{world.runc_id}", bad_name, check=False, env=env)
        assert refused.returncode == 1 and "cannot be a container name" in refused.stderr, bad_name
    empty = nsfs("containers", "--rename", "", "x", check=False, env=env)
    assert empty.returncode == 1 and "empty container name" in empty.stderr  # not the host
    assert not (tmp_path / "names.db").exists()
    broken = tmp_path / "broken.db"
    broken.write_bytes(b"this is not sqlite" * 100)
    damaged = nsfs("containers", "--db", str(broken), check=False, env=env)
    assert damaged.returncode == 1 and "names database" in damaged.stderr


def test_rename_is_kept_in_the_names_database(world: World, tmp_path: Path) -> None:
    db = tmp_path / "names.db"
    env = nsfs_env(world.runc_state, db)
    nsfs("containers", "--db", str(db), "--rename", f"/{world.runc_id}", "shop", env=env)
    data = json.loads(nsfs("containers", "--db", str(db), "-J", env=env).stdout)
    flat = {c["path"]: c for c in data["containers"]}
    assert flat["/shop"]["init"] == world.runc_init
    assert flat["/shop/inner"]["pids"] == [world.inner]  # children follow their parent's new name
    nsfs("containers", "--db", str(db), "--forget", "/shop", env=env)
    data = json.loads(nsfs("containers", "--db", str(db), "-J", env=env).stdout)
    assert f"/{world.runc_id}" in {c["path"] for c in data["containers"]}


def test_default_names_are_stable_between_snapshots(world: World) -> None:
    _, first = _find(world)
    _, second = _find(world)
    ours = {world.runc_init, world.inner, world.bwrap_init, world.nspawn_init}
    a = {c.init: c.path for c in first if c.init in ours}
    b = {c.init: c.path for c in second if c.init in ours}
    assert a == b and len(a) == 4


def test_python_api_is_importable_without_side_effects() -> None:
    result = subprocess.run([sys.executable, "-c", "import namespacefs.containers as c; print(c.find.__name__)"],
                            capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "find"


# --- engine recognition from recorded runtime state (the parsers, on real files) -----------------


def _candidate(snap: Snapshot, cgroups: dict[str, str] | None = None, cmdline: tuple[str, ...] = ("sleep",),
               comm: str = "sleep", starter: tuple[str, ...] | None = None) -> Candidate:
    me = snap.processes[os.getpid()]
    init = me._replace(cmdline=cmdline, comm=comm)
    parent = me._replace(pid=me.ppid, cmdline=starter, comm=os.path.basename(starter[0])) if starter else None
    cand = Candidate(snap, init, (init.pid,), parent)
    if cgroups is not None:
        cand._cgroups = cgroups
    return cand


DOCKER_ID = "4f" * 32


@pytest.mark.parametrize(("path", "engine", "name"), [
    (f"/system.slice/docker-{DOCKER_ID}.scope", "docker", DOCKER_ID[:12]),
    (f"/docker/{DOCKER_ID}", "docker", DOCKER_ID[:12]),
    (f"/machine.slice/libpod-{DOCKER_ID}.scope/container", "podman", DOCKER_ID[:12]),
    (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0c8b8a4e_1f2a_4b3c_9d8e_123456789abc.slice/crio-{DOCKER_ID}.scope",
     "cri-o", DOCKER_ID[:12]),
    (f"/kubepods/burstable/pod0c8b8a4e-1f2a-4b3c-9d8e-123456789abc/{DOCKER_ID}", "kubernetes", "pod-0c8b8a4e"),
    ("/lxc.payload.web01", "lxc", "web01"),
    ("/lxc/db", "lxc", "db"),
    ("/system.slice/systemd-resolved.service", "systemd", "systemd-resolved.service"),
    ("/machine.slice/machine-debian\\x2dtest.scope", "systemd-nspawn", "debian-test"),
])
def test_cgroup_paths_name_their_engines(path: str, engine: str, name: str) -> None:
    snap = core.snapshot(("process",))
    cand = _candidate(snap, {"": path, "name=systemd": path})
    ident = None
    for identify in containers.ENGINES:
        ident = identify(cand)
        if ident:
            break
    assert ident is not None and (ident.engine, ident.name) == (engine, name)
    if "pod" in path and "kubepods" in path:
        assert ident.labels["io.kubernetes.pod.uid"] == "0c8b8a4e-1f2a-4b3c-9d8e-123456789abc"


def test_a_container_a_services_script_started_is_not_the_service() -> None:
    snap = core.snapshot(("process",))
    unit = "/system.slice/ci-runner.service"
    by_systemd = _candidate(snap, {"": unit}, starter=("/usr/lib/systemd/systemd", "--user"))
    assert systemd.identify(by_systemd) == Identity("systemd", "ci-runner.service", "ci-runner.service",
                                                    {"cgroup": unit})
    by_script = _candidate(snap, {"": unit}, starter=("/bin/sh", "build.sh"))
    by_script.starter = by_script.starter._replace(pid=os.getpid())  # type: ignore[union-attr]  # never pid 1
    assert systemd.identify(by_script) is None  # `unshare -n` in a build step is no PrivateNetwork=


def test_nothing_is_claimed_for_a_plain_process() -> None:
    snap = core.snapshot(("process",))
    cand = _candidate(snap, {"": "/user.slice/session-3.scope"})
    assert all(identify(cand) is None for identify in containers.ENGINES)


def test_starters_name_bwrap_nspawn_and_browser_sandboxes() -> None:
    snap = core.snapshot(("process",))
    bw = _candidate(snap, {}, starter=("bwrap", "--unshare-all", "--hostname", "box", "sh"))
    assert (bwrap.identify(bw).engine, bwrap.identify(bw).name) == ("bwrap", "box")  # type: ignore[union-attr]
    ns = _candidate(snap, {}, starter=("/usr/bin/systemd-nspawn", "-q", "-D", "/srv/machines/deb12/", "/bin/sh"))
    assert nspawn.identify(ns).name == "deb12"  # type: ignore[union-attr]
    ns = _candidate(snap, {}, starter=("systemd-nspawn", "-M", "alpha", "-D", "/x"))
    assert nspawn.identify(ns).name == "alpha"  # type: ignore[union-attr]
    chrome = _candidate(snap, {}, cmdline=("/usr/lib/chromium/chromium", "--type=zygote", "--no-zygote-sandbox"),
                        comm="chromium")
    found = browser.identify(chrome)
    assert found is not None and (found.engine, found.name) == ("chromium", "chromium-zygote")
    fox = _candidate(snap, {}, cmdline=("/usr/lib/firefox/firefox", "-contentproc", "-childID", "1", "tab"),
                     comm="Isolated Web Co")
    assert browser.identify(fox).name == "firefox-tab"  # type: ignore[union-attr]


def test_containerd_and_docker_state_directories(tmp_path: Path) -> None:
    me = os.getpid()
    k8s = tmp_path / "containerd" / "k8s.io" / DOCKER_ID
    k8s.mkdir(parents=True)
    labels = ["io.kubernetes.pod.name=shop-7d9", "io.kubernetes.container.name=nginx"]
    (k8s / "state.json").write_text(json.dumps({"init_process_pid": me, "config": {"labels": labels}}))
    crun = tmp_path / "crun" / "plain"
    crun.mkdir(parents=True)
    (crun / "status").write_text(json.dumps({"pid": 1, "id": "plain"}))
    (tmp_path / "crun" / "broken").mkdir()
    (tmp_path / "crun" / "broken" / "status").write_text("{not json")
    states = oci.scan([(str(tmp_path / "containerd"), "containerd"), (str(tmp_path / "crun"), "crun")])
    assert states[me].engine == "kubernetes" and states[me].namespace == "k8s.io"
    assert states[1].engine == "crun" and states[1].id == "plain"
    snap = core.snapshot(("process",))
    ident = oci.identify(_candidate(snap), states)
    assert ident is not None and (ident.engine, ident.name, ident.engine_id) == ("kubernetes", "nginx", DOCKER_ID)
    assert ident.group == (("shop-7d9", None),)  # the container lives in its pod's node
