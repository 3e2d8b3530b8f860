"""Checkpoint and restore of a container.

`checkpoint` always writes, into DIR:
  topology.json  the container and everything nested in it: paths, engines, inits, processes and
                 every namespace (type, inode, id, owner, parent, id maps, hostname)
  names.json     the containers' names and keys, and the names of their namespaces
  criu.json      what CRIU said: whether it is installed, whether `criu check` passed on this
                 kernel, and the dump's outcome
and, only when `criu check` passes, runs `criu dump --tree INIT -D DIR/images`. Where CRIU is
missing or cannot run (Debian's CRIU 3.17 fails `criu check` on Linux 6.18), it says so plainly.

`restore DIR` runs `criu restore` when there are images and CRIU can run, then re-applies the
saved container names (to the restored tree, or to the containers still running under the same
engine id).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

from namespacefs import details
from namespacefs.containers import Container, ContainerTree
from namespacefs.handles import Gone
from namespacefs.model import Snapshot

FORMAT = 1


@dataclass
class CriuState:
    installed: bool
    version: str | None = None
    check_ok: bool = False
    message: str = ""  # the reason it cannot run, or the outcome

    def to_dict(self) -> dict[str, Any]:
        return {"installed": self.installed, "version": self.version, "check_ok": self.check_ok,
                "message": self.message}


@dataclass
class CheckpointReport:
    directory: str
    containers: list[str]
    namespaces: int
    criu: CriuState
    dumped: bool = False
    files: list[str] = field(default_factory=list)


def criu_state(timeout: float = 60.0) -> CriuState:
    """Is CRIU installed, and does `criu check` pass on this kernel?"""
    exe = shutil.which("criu")
    if exe is None:
        return CriuState(False, message="CRIU is not installed (Debian package 'criu')")
    try:
        version = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=timeout).stdout
        check = subprocess.run([exe, "check"], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return CriuState(True, message=f"criu could not be run: {e}")
    ver = next((ln.split(":", 1)[1].strip() for ln in version.splitlines() if ln.startswith("Version")), None)
    if check.returncode == 0:
        return CriuState(True, ver, True, "criu check passed")
    text = _reason(check.stderr + check.stdout)
    return CriuState(True, ver, False, f"CRIU {ver or ''} cannot checkpoint on kernel {os.uname().release}: "
                                       f"`criu check` failed: {text}")


def _reason(output: str) -> str:
    """The informative part of CRIU's errors: 'Error (criu/vdso.c:613): vdso: Failed …' -> 'vdso: Failed …',
    without the generic 'exited, status=1' lines; the first two causes and the final consequence."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    errors = [re.sub(r"^Error \([^)]*\):\s*", "", ln) for ln in lines if ln.startswith("Error")]
    errors = [e for e in errors if not e.startswith("exited, status")] or errors or lines or ["no output"]
    picked = list(dict.fromkeys(errors[:2] + errors[-1:]))
    return "; ".join(picked)


def _namespace_entry(snapshot: Snapshot, inode: int) -> dict[str, Any]:
    ns = snapshot.get(inode)
    if ns is None:
        return {"inode": inode}
    entry = ns.to_dict()
    entry.pop("holders", None)
    if ns.type == "uts":
        with contextlib.suppress(OSError, Gone):
            entry["hostname"] = details.uname(ns, snapshot)["nodename"]
    return entry


def topology(snapshot: Snapshot, tree: ContainerTree, target: Container) -> dict[str, Any]:
    inodes = sorted({i for c in target.walk() for i in c.namespaces.values()})
    parent = tree.parent(target)
    return {
        "format": FORMAT, "taken_at": time.time(), "boot_id": snapshot.boot_id, "kernel": snapshot.kernel,
        "container": target.to_dict(), "parent": parent.path if parent else None,
        "namespaces": [_namespace_entry(snapshot, i) for i in inodes],
        "processes": [snapshot.processes[p].to_dict() for p in sorted(target.all_pids) if p in snapshot.processes],
    }


def names_of(snapshot: Snapshot, target: Container) -> dict[str, Any]:
    containers = [{"path": c.path, "name": c.name, "key": c.key, "engine": c.engine, "engine_id": c.engine_id,
                   "init": c.init} for c in target.walk()]
    namespaces = []
    for inode in sorted({i for c in target.walk() for i in c.namespaces.values()}):
        ns = snapshot.get(inode)
        if ns is not None and (ns.name or ns.path):
            namespaces.append({"type": ns.type, "inode": ns.inode, "id": ns.id, "name": ns.name, "path": ns.path})
    return {"format": FORMAT, "containers": containers, "namespaces": namespaces}


def checkpoint(snapshot: Snapshot, tree: ContainerTree, target: Container, directory: str,
               leave_running: bool = True, criu: CriuState | None = None) -> CheckpointReport:
    if target.path == "/":
        raise ValueError("refusing to checkpoint the host ('/'); name a container")
    os.makedirs(directory, exist_ok=True)
    report = CheckpointReport(directory, [c.path for c in target.walk()],
                              len({i for c in target.walk() for i in c.namespaces.values()}),
                              criu or criu_state())
    _write(directory, "topology.json", topology(snapshot, tree, target), report)
    _write(directory, "names.json", names_of(snapshot, target), report)
    if report.criu.check_ok:
        images = os.path.join(directory, "images")
        os.makedirs(images, exist_ok=True)
        argv = ["criu", "dump", "--tree", str(target.init), "-D", images, "--shell-job", "--tcp-established",
                "--file-locks", "--ext-unix-sk", "--manage-cgroups", "-o", "dump.log"]
        if leave_running:
            argv.append("--leave-running")
        report.dumped, report.criu.message = _run_criu(argv, "dump", images)
        if report.dumped and not _has_images(images):
            report.dumped = False
            report.criu.message = f"criu dump exited 0 but wrote no process image into {images}"
    _write(directory, "criu.json", {**report.criu.to_dict(), "dumped": report.dumped, "init": target.init}, report)
    return report


def _has_images(images: str) -> bool:
    """Whether CRIU left at least one image (*.img) behind: its exit status alone is not proof."""
    try:
        return any(name.endswith(".img") for name in os.listdir(images))
    except OSError:
        return False


def _write(directory: str, name: str, data: Any, report: CheckpointReport) -> None:
    path = os.path.join(directory, name)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
    report.files.append(path)


def load(directory: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(topology, names) of a checkpoint directory; ValueError with a clear message if it is not one."""
    try:
        with open(os.path.join(directory, "topology.json")) as f:
            topo = json.load(f)
        with open(os.path.join(directory, "names.json")) as f:
            names = json.load(f)
    except FileNotFoundError as e:
        raise ValueError(f"{directory} is not a namespacefs checkpoint (no {os.path.basename(e.filename)})") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read the checkpoint in {directory}: {e}") from None
    if not isinstance(topo, dict) or topo.get("format") != FORMAT:
        found = topo.get("format") if isinstance(topo, dict) else type(topo).__name__
        raise ValueError(f"{directory}: unknown checkpoint format {found!r}")
    if not _names_ok(names):
        raise ValueError(f"{directory}/names.json is damaged: it does not list containers with a name and key")
    return topo, names


def _names_ok(names: Any) -> bool:
    """names.json as checkpoint() writes it: a list of containers, each with a string name and key
    (a hand-edited or truncated file must not reach the names database)."""
    if not isinstance(names, dict) or not isinstance(names.get("containers", []), list):
        return False
    return all(isinstance(c, dict) and isinstance(c.get("name"), str) and isinstance(c.get("key"), str)
               for c in names.get("containers", []))


@dataclass
class RestoreReport:
    criu: CriuState
    restored_pid: int | None = None
    renamed: list[tuple[str, str]] = field(default_factory=list)  # (key, name) re-applied
    unmatched: list[str] = field(default_factory=list)  # saved paths with no container to name
    unchanged: list[str] = field(default_factory=list)  # live paths that already carry their saved name


def criu_restore(directory: str, criu: CriuState) -> int | None:
    """Restore the dumped images detached; the restored init pid (CRIU keeps pids), or None."""
    images = os.path.join(directory, "images")
    if not criu.check_ok or not os.path.isdir(images):
        return None
    pidfile = os.path.join(directory, "restore.pid")
    ok, criu.message = _run_criu(["criu", "restore", "-D", images, "--restore-detached", "--shell-job",
                                  "--tcp-established", "--file-locks", "--ext-unix-sk", "--manage-cgroups",
                                  "--pidfile", pidfile, "-o", "restore.log"], "restore", images)
    if not ok:
        return None
    try:
        with open(pidfile) as f:
            return int(f.read().strip())
    except (OSError, ValueError) as e:
        criu.message = f"criu restore ran but left no usable pid file {pidfile}: {e}"
        return None


def _run_criu(argv: list[str], what: str, images: str, timeout: float = 600.0) -> tuple[bool, str]:
    """(succeeded, what to tell the user) for one criu run; CRIU hanging or vanishing is reported, not raised."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"criu {what} could not run: {e}"
    if done.returncode != 0:
        return False, f"criu {what} failed (status {done.returncode}); see {images}/{what}.log"
    return True, f"criu {what} succeeded"


def match_names(names: dict[str, Any], tree: ContainerTree, restored_pid: int | None) -> RestoreReport:
    """Which saved names go to which live container: the same key (engine id, or namespace ids
    while the namespaces live), else the same init pid after a CRIU restore."""
    report = RestoreReport(CriuState(False))
    by_key = {c.key: c for c in tree}
    by_init = {c.init: c for c in tree}
    for saved in names.get("containers", []):
        live = by_key.get(saved.get("key"))
        if live is None and restored_pid is not None:
            live = by_init.get(saved.get("init"))
        if live is None:
            report.unmatched.append(saved.get("path", "?"))
            continue
        if live.name == saved["name"]:  # already called that: storing it would only pin today's default
            report.unchanged.append(live.path)
            continue
        report.renamed.append((live.key, saved["name"]))
    return report
