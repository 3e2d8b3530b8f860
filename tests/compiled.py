"""Running one of our C extensions, built on its own, under valgrind or AddressSanitizer: the
checks every compiled module of the project gets (this code runs as root over data other users
control)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest


def build_extension(source: Path, out: Path, *flags: str) -> Path:
    """One of our C files compiled on its own (with the same warnings as the install), into out."""
    target = out / f"{source.stem}{sysconfig.get_config_var('EXT_SUFFIX')}"
    cc = ["gcc", "-shared", "-fPIC", "-g", "-O1", "-Wall", "-Wextra", "-Werror", "-std=gnu11",
          f"-I{sysconfig.get_paths()['include']}", *flags, str(source), "-o", str(target)]
    subprocess.run(cc, check=True, capture_output=True, text=True)
    return out


def valgrind_errors(source: Path, out: Path, script: str, *args: str,
                    timeout: float = 280) -> tuple[str, list[tuple[str | None, str | None]]]:
    """Build `source` into out and run `python -c script out *args` under valgrind (memcheck, full
    leak check): (its stdout, the (kind, what) of each error with a frame in that C file)."""
    if shutil.which("valgrind") is None:
        pytest.skip("valgrind is not installed (bootstrap.sh installs it)")
    log = out / "valgrind.xml"
    build_extension(source, out)
    done = subprocess.run(
        ["valgrind", "--error-exitcode=99", "--leak-check=full", "--errors-for-leak-kinds=definite",
         "--xml=yes", f"--xml-file={log}", sys.executable, "-c", script, str(out), *args],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, "PYTHONMALLOC": "malloc"})
    assert done.returncode in (0, 99), done.stderr[-2000:]
    stem = source.stem
    errors = ET.parse(log).getroot().findall("error")
    ours = [(e.findtext("kind"), e.findtext("what") or e.findtext("xwhat/text")) for e in errors
            if any(stem in (f.findtext("obj") or "") or f.findtext("file") == source.name for f in e.iter("frame"))]
    return done.stdout, ours


def asan_run(source: Path, out: Path, script: str, *args: str, timeout: float = 120) -> str:
    """Build `source` with -fsanitize=address,undefined into out and run `python -c script out
    *args` with the runtime preloaded; any invalid access fails the test. Its stdout."""
    runtime = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    if not os.path.isabs(runtime) or not os.path.exists(runtime):
        pytest.skip("gcc has no AddressSanitizer runtime here")
    build_extension(source, out, "-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=all")
    env = {**os.environ, "LD_PRELOAD": runtime, "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0:exitcode=98",
           "UBSAN_OPTIONS": "halt_on_error=1:exitcode=98"}
    done = subprocess.run([sys.executable, "-c", script, str(out), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ERROR: AddressSanitizer" not in done.stderr
    return done.stdout
