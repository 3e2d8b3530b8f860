"""The compiled HMAC-SHA256 behind default names (_digest.c): the same digests as Python's hmac
module for keys and messages of every length around SHA-256's block boundaries, a clear TypeError
for what is not bytes, and clean under valgrind and AddressSanitizer."""

from __future__ import annotations

import hashlib
import hmac
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from namespacefs import _digest
from test_walk import build_extension

SOURCE = Path(_digest.__file__).parent / "_digest.c"


def expected(key: bytes, message: bytes) -> str:
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def test_every_key_and_message_length_around_the_block_gives_hmacs_digest() -> None:
    """Keys up to past two blocks (a key longer than one block is hashed first: RFC 2104) and
    messages whose padding takes one block or spills into a second (55, 56, 63, 64 bytes...)."""
    messages = [bytes(range(n % 256)) * (1 + n // 256) for n in range(0, 200)]
    for length in range(0, 140):
        key = bytes((7 * i + length) % 256 for i in range(length))
        assert _digest.hmac_sha256_hex(key, messages) == [expected(key, m) for m in messages], length


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.lists(st.binary(max_size=300), max_size=20))
def test_any_key_and_messages(key: bytes, messages: list[bytes]) -> None:
    assert _digest.hmac_sha256_hex(key, messages) == [expected(key, m) for m in messages]


def test_a_long_message_and_any_sequence() -> None:
    message = os.urandom(1 << 20)
    assert _digest.hmac_sha256_hex(b"k", (message, b"")) == [expected(b"k", message), expected(b"k", b"")]


@pytest.mark.parametrize("messages", [[b"a", "b"], [None], 5, [bytearray(b"a")]])
def test_what_is_not_a_sequence_of_bytes_is_a_type_error(messages: object) -> None:
    with pytest.raises(TypeError):
        _digest.hmac_sha256_hex(b"key", messages)  # type: ignore[arg-type]


RUN = """
import hashlib, hmac, os, sys
sys.path.insert(0, sys.argv[1])
import _digest
for length in (0, 1, 55, 56, 63, 64, 65, 130):
    key = os.urandom(length)
    messages = [os.urandom(n) for n in range(0, 130)]
    assert _digest.hmac_sha256_hex(key, messages) == [hmac.new(key, m, hashlib.sha256).hexdigest() for m in messages]
try:
    _digest.hmac_sha256_hex(b"k", [b"a", 1])
except TypeError:
    pass
print("ran", _digest.__file__)
"""


def test_the_digest_code_runs_clean_under_valgrind(tmp_path: Path) -> None:
    """No invalid read or write, no use of uninitialised memory and no definite leak with a stack in
    _digest.c."""
    if shutil.which("valgrind") is None:
        pytest.skip("valgrind is not installed (bootstrap.sh installs it)")
    build = build_extension(SOURCE, tmp_path)
    log = tmp_path / "valgrind.xml"
    done = subprocess.run(
        ["valgrind", "--error-exitcode=99", "--leak-check=full", "--errors-for-leak-kinds=definite",
         "--xml=yes", f"--xml-file={log}", sys.executable, "-c", RUN, str(build)],
        capture_output=True, text=True, timeout=280, env={**os.environ, "PYTHONMALLOC": "malloc"})
    assert done.returncode in (0, 99), done.stderr[-2000:]
    assert f"ran {build}" in done.stdout  # the build under test, run to the end
    errors = ET.parse(log).getroot().findall("error")
    ours = [(e.findtext("kind"), e.findtext("what") or e.findtext("xwhat/text")) for e in errors
            if any("_digest" in (f.findtext("obj") or "") or f.findtext("file") == "_digest.c" for f in e.iter("frame"))]
    assert not ours, ours


def test_the_digest_code_runs_clean_under_address_sanitizer(tmp_path: Path) -> None:
    runtime = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    if not os.path.isabs(runtime) or not os.path.exists(runtime):
        pytest.skip("gcc has no AddressSanitizer runtime here")
    build = build_extension(SOURCE, tmp_path, "-fsanitize=address,undefined", "-fno-omit-frame-pointer",
                            "-fno-sanitize-recover=all")
    env = {**os.environ, "LD_PRELOAD": runtime, "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0:exitcode=98",
           "UBSAN_OPTIONS": "halt_on_error=1:exitcode=98"}
    done = subprocess.run([sys.executable, "-c", RUN, str(build)], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"ran {build}" in done.stdout and "ERROR: AddressSanitizer" not in done.stderr
