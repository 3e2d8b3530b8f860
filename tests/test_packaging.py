"""namespacefs as an operator installs it: the license and metadata, --version on every command, man
pages and bash completion made from the parsers, the systemd unit (verified by systemd-analyze,
shipped in the package) and its Type=notify readiness, and the system install into a prefix."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib import metadata, resources
from pathlib import Path

import httpx
import pytest

import namespacefs
from conftest import kill_group
from namespacefs.cli import COMMANDS, build_parser, command_parser, manual
from namespacefs.service.notify import sd_notify

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(sys.executable).parent.parent  # the venv bootstrap.sh made
UNIT = ROOT / "contrib" / "namespacefs.service"
VERSION = metadata.version("namespacefs")


def long_options(parser: argparse.ArgumentParser) -> list[str]:
    """Its documented long options (not those hidden with help=SUPPRESS)."""
    return [s for a in parser._actions if a.help != argparse.SUPPRESS for s in a.option_strings if s.startswith("--")]


# --- license, metadata, version ---------------------------------------------------------------


def test_the_license_file_is_the_gpl2_and_the_metadata_says_gpl2_or_later() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("GNU GENERAL PUBLIC LICENSE\n                       Version 2, June 1991")
    assert "END OF TERMS AND CONDITIONS" in text and len(text.splitlines()) > 300  # the whole text
    meta = metadata.metadata("namespacefs")
    assert meta["License-Expression"] == "GPL-2.0-or-later"
    assert "LICENSE" in meta.get_all("License-File")
    assert meta["Author"] or meta["Author-email"]
    assert "Operating System :: POSIX :: Linux" in meta.get_all("Classifier")
    assert not meta.get_all("Project-URL") and not meta["Home-page"]  # no public URL exists: none invented


def test_version_is_the_package_metadata_on_every_command() -> None:
    assert namespacefs.__version__ == VERSION
    for argv in (["--version"], ["-V"], *([c, "--version"] for c in COMMANDS)):
        result = subprocess.run([sys.executable, "-m", "namespacefs", *argv], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and result.stdout == f"nsfs from namespacefs {VERSION}\n", (argv, result)
        assert result.stderr == ""


def test_the_version_costs_a_command_nothing_until_asked() -> None:
    """Reading package metadata imports ~40 ms of modules: only -V/--version may pay for it."""
    probe = ("import sys; from namespacefs.cli import command_parser; command_parser('ls').parse_args([]); "
             "print('importlib.metadata' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False", out


def test_nsfs_help_lists_every_command_and_a_command_loads_only_its_own_module() -> None:
    """`nsfs --help` names each command with its one-line help, without importing any command's
    module; `nsfs ls` imports ls's (and what every command shares), no other command's."""
    env = dict(os.environ, COLUMNS="300", NSFS_NO_DAEMON="1")
    out = subprocess.run([sys.executable, "-m", "namespacefs", "--help"], capture_output=True, text=True, timeout=60,
                         env=env, check=True).stdout
    for name, (_module, help_text) in COMMANDS.items():
        assert re.search(rf"^ +{name} +{re.escape(help_text)}$", out, re.M), (name, out)
    probe = ("import sys; from namespacefs.cli import main; main({argv!r}); print(sorted(m for m in sys.modules "
             "if m.startswith('namespacefs.cli.')), file=sys.stderr)")
    for argv, loaded in ((["--help"], []),
                         (["ls", "-n"], ["namespacefs.cli.common", "namespacefs.cli.ls", "namespacefs.cli.output",
                                         "namespacefs.cli.remote"])):  # (remote: ls asks a daemon first)
        run = subprocess.run([sys.executable, "-c", probe.format(argv=argv)], capture_output=True, text=True,
                             timeout=60, env=env, check=True)
        assert run.stderr.strip().splitlines()[-1] == repr(loaded), run


# --- man pages and completion -------------------------------------------------------------------


def rendered(page: Path) -> str:
    """The page as man shows it, unwrapped (no hyphenation breaking an option apart)."""
    env = {k: v for k, v in os.environ.items() if k != "MAN_KEEP_FORMATTING"} | {"MANWIDTH": "1000"}
    out = subprocess.run(["man", "-l", "-P", "cat", str(page)], capture_output=True, text=True, env=env, timeout=60,
                         check=True).stdout
    return out.replace("\u2010", "-")


def test_a_man_page_per_command_that_names_each_of_its_options(tmp_path: Path) -> None:
    written = manual.write_man_pages(str(tmp_path))
    assert len(written) == len(COMMANDS) + 1
    assert manual.write_man_pages(str(tmp_path)) == []  # a second run changes nothing
    top = rendered(tmp_path / "nsfs.1")
    for name in COMMANDS:
        assert re.search(rf"^\s+nsfs {name}$", top, re.M), name  # every command listed in nsfs(1)
        assert f"nsfs-{name}(1)" in top
        text = rendered(tmp_path / f"nsfs-{name}.1")
        assert text.startswith(f"NSFS-{name.upper()}(1)") and f"nsfs-{name} - {COMMANDS[name][1]}" in text
        options = long_options(command_parser(name))
        assert "--version" in options and "--help" in options
        missing = [o for o in options if o not in text and o != "--help"]  # argparse-manpage leaves out --help
        assert not missing, (name, missing)
    # and the ones bootstrap.sh installed into the venv are where man looks
    for name in ("nsfs", *(f"nsfs-{c}" for c in COMMANDS)):
        assert (VENV / "share/man/man1" / f"{name}.1").is_file(), f"bootstrap.sh did not install {name}.1"
    found = subprocess.run(["man", "-w", "nsfs-serve"], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "MANPATH": f"{VENV}/share/man:"})
    assert found.returncode == 0 and found.stdout.strip().endswith("nsfs-serve.1"), found


def complete(script: Path, line: str) -> list[str]:
    """What bash completion offers for `line` (the cursor at its end), with the script sourced."""
    words = line.split(" ")
    program = f"""source {script}
COMP_LINE={line!r}; COMP_POINT=${{#COMP_LINE}}; COMP_WORDS=({' '.join(repr(w) for w in words)}); COMP_CWORD={len(words) - 1}
$(complete -p nsfs | sed -E 's/.* -F ([^ ]+) .*/\\1/') nsfs {words[-1]!r} {words[-2]!r}
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    out = subprocess.run(["bash", "--norc", "-c", program], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_bash_completion_is_valid_bash_and_completes_commands_and_options() -> None:
    script = VENV / "share/bash-completion/completions/nsfs"
    assert script.is_file(), "bootstrap.sh installs the completion script"
    assert script.read_text() == manual.completion("bash"), "stale completion: run bash bootstrap.sh again"
    check = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    assert sorted(complete(script, "nsfs ")) == sorted(c for c in build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    assert complete(script, "nsfs se") == ["serve"]
    assert "--listen" in complete(script, "nsfs serve --") and "--token-file" in complete(script, "nsfs serve --")
    assert complete(script, "nsfs watch --no-d") == ["--no-daemon"]


# --- the systemd unit ----------------------------------------------------------------------------


def systemd_analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not installed (bootstrap.sh installs the systemd package)")
    probe = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"systemd-analyze cannot run here: {probe.stderr.strip()}")
    return exe


def settings(unit: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in unit.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def verify(exe: str, unit_text: str, directory: Path, manpath: str) -> subprocess.CompletedProcess[str]:
    path = directory / "namespacefs.service"
    path.write_text(unit_text)
    return subprocess.run([exe, "verify", str(path)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MANPATH": f"{manpath}:"})


def test_the_unit_is_shipped_in_the_package_and_is_the_contrib_file() -> None:
    shipped = resources.files("namespacefs").joinpath("contrib/namespacefs.service").read_text()
    assert shipped == UNIT.read_text()


def test_the_unit_passes_systemd_analyze_verify_and_is_hardened(tmp_path: Path) -> None:
    exe = systemd_analyze()
    text = UNIT.read_text()
    s = settings(text)
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert s["ExecStart"][0].startswith("/opt/namespacefs/bin/nsfs serve ")
    assert s["StateDirectory"] == ["namespacefs"] and s["RuntimeDirectory"] == ["namespacefs"]
    assert s["Documentation"] == ["man:nsfs-serve(1) man:nsfs(1)"]  # pages bootstrap.sh installs, no URL
    assert s["ProtectSystem"] == ["strict"] and s["ProtectHome"] == ["read-only"] and s["NoNewPrivileges"] == ["yes"]
    # the install path does not exist on this machine: verify the unit as install-system writes it
    # for the venv here (the same rewrite, tested for real in the install test below)
    installed = text.replace("/opt/namespacefs/", f"{VENV}/")
    result = verify(exe, installed, tmp_path, f"{VENV}/share/man")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    # and it can fail: a unit naming a missing program, or man pages nobody installed, does not pass
    assert verify(exe, text, tmp_path, str(tmp_path)).returncode != 0
    security = subprocess.run([exe, "security", "--offline=true", str(tmp_path / "namespacefs.service")],
                              capture_output=True, text=True, timeout=120)
    level = re.search(r"Overall exposure level for \S+: ([\d.]+)", security.stdout)
    assert level is not None, security.stdout[-500:]
    print(f"systemd-analyze security exposure: {level.group(1)}")
    assert float(level.group(1)) < 6.0  # "MEDIUM"; root with CAP_SYS_ADMIN cannot go much lower


BOOT_CHECK = """#!/bin/sh
# runs inside the container once namespacefs.service is up (or failed)
systemctl show -p ActiveState,SubState,Result,StatusText,MainPID,Type namespacefs > /out/state
# a user namespace with a hostname of its own: reading them means joining them, which the
# hardening must allow (capabilities, RestrictNamespaces)
unshare --user --map-root-user --uts sh -c 'hostname inbox && exec sleep 300' &
{python} /units/query.py > /out/query.json 2> /out/query.err
systemctl stop namespacefs
systemctl show -p ActiveState,Result,ExecMainStatus namespacefs > /out/stopped
ls -ld /run/namespacefs /var/lib/namespacefs > /out/dirs 2>&1
journalctl -u namespacefs --no-pager -o cat > /out/journal 2>&1
systemctl poweroff
"""
BOOT_QUERY = """import json, time
from namespacefs.service.client import get_json
second = "/run/namespacefs-api.sock"  # the socket's second name: it must work under systemd too
deadline = time.monotonic() + 60
while "inbox" not in get_json("/api/hostnames", second).values() and time.monotonic() < deadline:
    time.sleep(0.5)
print(json.dumps({"status": get_json("/api/status", second), "hostnames": get_json("/api/hostnames", second),
                  "accounting": get_json("/api/accounting?limits=true", second)}))
"""


def test_the_unit_runs_hardened_under_real_systemd_in_a_container(tmp_path: Path) -> None:
    """The unit as install-system writes it, booted for real: systemd (PID 1 in a systemd-nspawn
    container of the host's /usr, private network) starts it with all its hardening, waits for
    its READY=1 and stops it. Only the ordering is changed (DefaultDependencies=no), so that
    nothing but the journal and this unit starts."""
    if shutil.which("systemd-nspawn") is None:
        pytest.skip("systemd-nspawn is not installed (bootstrap.sh installs systemd-container)")
    units, out = tmp_path / "units", tmp_path / "out"
    units.mkdir()
    out.mkdir()
    unit = UNIT.read_text().replace("/opt/namespacefs/", f"{VENV}/").replace("[Unit]\n", "[Unit]\nDefaultDependencies=no\n", 1)
    (units / "namespacefs.service").write_text(unit)
    (units / "check.sh").write_text(BOOT_CHECK.format(python=VENV / "bin" / "python"))
    (units / "query.py").write_text(BOOT_QUERY)
    (units / "nsfs-check.service").write_text(
        "[Unit]\nDefaultDependencies=no\nAfter=namespacefs.service\n[Service]\nType=oneshot\nExecStart=/bin/sh /units/check.sh\n")
    (units / "nsfs-test.target").write_text(
        "[Unit]\nDefaultDependencies=no\nWants=systemd-journald.socket namespacefs.service nsfs-check.service\n")
    binds = [f"--bind-ro={ROOT}", f"--bind-ro={units}:/units", f"--bind={out}:/out"]
    binds += [f"--bind-ro={units / n}:/etc/systemd/system/{n}" for n in ("namespacefs.service", "nsfs-check.service",
                                                                        "nsfs-test.target")]
    if str(VENV).startswith(str(ROOT)) is False:
        binds.append(f"--bind-ro={VENV}")
    boot = subprocess.Popen(["systemd-nspawn", "-q", "--register=no", "--keep-unit", "--directory=/", "--volatile=yes",
                             "--private-network", f"--machine=nsfs-unit-{os.getpid()}", *binds, "--boot", "--",
                             "systemd.unit=nsfs-test.target"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        console, _ = boot.communicate(timeout=240)
    finally:
        kill_group(boot)
    state = dict(line.split("=", 1) for line in (out / "state").read_text().splitlines()) if (out / "state").exists() else {}
    journal = (out / "journal").read_text() if (out / "journal").exists() else ""
    assert state.get("ActiveState") == "active" and state.get("SubState") == "running", (state, journal, console[-3000:])
    assert state["Type"] == "notify" and state["StatusText"] == "serving"  # it said READY=1 and STATUS=serving
    query = json.loads((out / "query.json").read_text() or "null") or pytest.fail((out / "query.err").read_text())
    status = query["status"]
    assert status["namespaces"] > 0 and status["processes"] > 0, status
    assert "inbox" in query["hostnames"].values(), query["hostnames"]  # it joined that uts namespace
    inside = [u for u in query["accounting"]["user_namespaces"] if u["uid_map"] == [[0, 0, 1]] and u["level"] == 1]
    assert inside and inside[0]["limits"] and not inside[0]["limits_error"], query["accounting"]  # and that user namespace
    print(f"under systemd: {status['namespaces']} namespaces, {status['processes']} processes, "
          f"netlink={status['netlink']} ({status['netlink_error']})")
    stopped = dict(line.split("=", 1) for line in (out / "stopped").read_text().splitlines())
    assert stopped["ActiveState"] == "inactive" and stopped["Result"] == "success" and stopped["ExecMainStatus"] == "0"
    dirs = (out / "dirs").read_text()
    assert re.search(r"^drwx------ .* /run/namespacefs$", dirs, re.M) and "/var/lib/namespacefs" in dirs, dirs
    assert "Traceback" not in journal and "second API socket" not in journal, journal


# --- sd_notify -----------------------------------------------------------------------------------


class NotifySocket:
    """A datagram socket like the service manager's, with the sender's credentials."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.address = path

    def receive(self, timeout: float) -> tuple[bytes, int]:
        """(datagram, sender pid)."""
        self.sock.settimeout(timeout)
        data, ancillary, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        pid = next(int.from_bytes(d[:4], "little") for level, kind, d in ancillary
                   if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS)
        return data, pid

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    s = NotifySocket(str(tmp_path / "notify.sock"))
    yield s
    s.close()


def test_sd_notify_sends_what_systemd_notify_sends(notify_socket: NotifySocket) -> None:
    env = {**os.environ, "NOTIFY_SOCKET": notify_socket.address}
    assert sd_notify("READY=1\nSTATUS=hello", env) is True
    ours, pid = notify_socket.receive(5)
    assert pid == os.getpid()
    subprocess.run(["systemd-notify", "--ready", "--status=hello", "--no-block"], env=env, timeout=30, check=True)
    theirs, _ = notify_socket.receive(5)
    assert ours == theirs == b"READY=1\nSTATUS=hello"
    assert sd_notify("READY=1", {}) is False  # not under systemd: nothing to do
    assert sd_notify("READY=1", {"NOTIFY_SOCKET": notify_socket.address + ".gone"}) is False  # logged, not raised


def test_sd_notify_reaches_an_abstract_socket() -> None:
    name = f"nsfs-test-notify-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)
        s.settimeout(5)
        assert sd_notify("READY=1", {"NOTIFY_SOCKET": "@" + name})
        assert s.recv(100) == b"READY=1"


def test_serve_says_ready_only_when_it_answers_and_stopping_on_sigterm(notify_socket: NotifySocket, tmp_path: Path) -> None:
    sock = str(tmp_path / "api.sock")
    proc = subprocess.Popen([sys.executable, "-m", "namespacefs", "serve", "--socket", sock], start_new_session=True,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "NOTIFY_SOCKET": notify_socket.address, "NSFS_DB": str(tmp_path / "n.db")})
    try:
        data, pid = notify_socket.receive(180)
        assert data.split(b"\n")[0] == b"READY=1" and pid == proc.pid  # from the main process (NotifyAccess=main)
        clock = time.monotonic()
        with httpx.Client(transport=httpx.HTTPTransport(uds=sock), base_url="http://nsfs", timeout=10) as http:
            assert http.get("/api/status").json()["namespaces"] > 0  # ready means it answers, now
        assert time.monotonic() - clock < 5
        os.killpg(proc.pid, signal.SIGTERM)
        data, pid = notify_socket.receive(30)
        assert data == b"STOPPING=1" and pid == proc.pid
        assert proc.wait(30) == 0
    finally:
        kill_group(proc)
    assert "Traceback" not in (proc.stderr.read() if proc.stderr else "")


# --- the system install --------------------------------------------------------------------------


def test_install_system_into_a_prefix_gives_a_working_command_pages_completion_and_a_unit(tmp_path: Path) -> None:
    """`bash bootstrap.sh install-system` for real, into a temporary prefix (the defaults are
    /opt/namespacefs, /usr/local and /etc/systemd/system): a non-editable install, so the package
    data is what a wheel carries."""
    exe = systemd_analyze()
    where = {"NSFS_PREFIX": tmp_path / "opt", "NSFS_BINDIR": tmp_path / "bin", "NSFS_SHARE": tmp_path / "share",
             "NSFS_UNITDIR": tmp_path / "units"}
    result = subprocess.run(["bash", str(ROOT / "bootstrap.sh"), "install-system"], capture_output=True, text=True,
                            timeout=600, env={**os.environ, **{k: str(v) for k, v in where.items()}})
    assert result.returncode == 0, result.stderr[-3000:]
    nsfs = tmp_path / "bin" / "nsfs"
    assert os.path.realpath(nsfs) == str(tmp_path / "opt" / "bin" / "nsfs")
    assert subprocess.run([nsfs, "--version"], capture_output=True, text=True, check=True).stdout.strip().endswith(VERSION)
    python = tmp_path / "opt" / "bin" / "python"
    located = subprocess.run([python, "-c", "import namespacefs, sys; print(namespacefs.__file__)"], capture_output=True,
                             text=True, check=True, cwd=tmp_path).stdout.strip()
    package = Path(located).parent
    assert str(package).startswith(str(tmp_path / "opt")), "a copy in the prefix, not the source tree"
    assert (package / "contrib" / "namespacefs.service").read_text() == UNIT.read_text()
    assert (package / "contrib" / "namespacefs.rules.yml").read_text() == (ROOT / "contrib" / "namespacefs.rules.yml").read_text()
    assert (package / "service" / "web" / "index.html").is_file()
    for name in ("nsfs", *(f"nsfs-{c}" for c in COMMANDS)):
        assert (tmp_path / "share/man/man1" / f"{name}.1").is_file()
    completion = tmp_path / "share/bash-completion/completions/nsfs"
    assert "serve" in complete(completion, "nsfs se")
    unit = (tmp_path / "units" / "namespacefs.service").read_text()
    assert settings(unit)["ExecStart"][0].startswith(f"{tmp_path}/opt/bin/nsfs serve ")
    checked = subprocess.run([exe, "verify", str(tmp_path / "units" / "namespacefs.service")], capture_output=True,
                             text=True, timeout=120, env={**os.environ, "MANPATH": f"{tmp_path}/share/man:"})
    assert checked.returncode == 0 and checked.stderr == "", checked.stderr
