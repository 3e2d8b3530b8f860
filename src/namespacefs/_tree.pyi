"""Types of the compiled per-directory work of `nsfs shift --chown` (_tree.c), for the type checker."""

from collections.abc import Callable

RECORD_SIZE: int
REC_XATTRS: int

#: (entry name, xattr name, old value, new value)
XattrRow = tuple[bytes, str, bytes, bytes]

def plan(rootfd: int, path: bytes, uid_of: Callable[[int], int], gid_of: Callable[[int], int],
         id_xattrs: tuple[str, ...], xattr_of: Callable[[str, bytes], bytes | None], links: set[int],
         /) -> tuple[bytes, int, list[bytes], list[XattrRow]] | None: ...
def apply(rootfd: int, path: bytes, blob: bytes, forward: bool, skip: set[bytes] | None,
          xattrs: dict[bytes, list[tuple[str, bytes, bytes, bool]]] | None, /) -> tuple[int, int, list[tuple[bytes, str]]]: ...
