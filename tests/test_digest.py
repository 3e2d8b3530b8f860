"""The compiled HMAC-SHA256 behind default names (_digest.c): the same digests as Python's hmac
module for keys and messages of every length around SHA-256's block boundaries, a clear TypeError
for what is not bytes, and clean under valgrind and AddressSanitizer."""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compiled import asan_run, valgrind_errors
from namespacefs import _digest

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
        _digest.hmac_sha256_hex(b"key", messages)  # type: ignore[arg-type,unused-ignore]


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
print("ran", os.path.dirname(_digest.__file__))
"""


def test_the_digest_code_runs_clean_under_valgrind(tmp_path: Path) -> None:
    """No invalid read or write, no use of uninitialised memory and no definite leak with a stack in
    _digest.c."""
    out, errors = valgrind_errors(SOURCE, tmp_path, RUN)
    assert f"ran {tmp_path}" in out  # the build under test, run to the end
    assert not errors, errors


def test_the_digest_code_runs_clean_under_address_sanitizer(tmp_path: Path) -> None:
    assert f"ran {tmp_path}" in asan_run(SOURCE, tmp_path, RUN)
