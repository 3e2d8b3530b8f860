"""Types of the compiled HMAC-SHA256 of default names (_digest.c), for the type checker."""

from collections.abc import Sequence

def hmac_sha256_hex(key: bytes, messages: Sequence[bytes], /) -> list[str]: ...
