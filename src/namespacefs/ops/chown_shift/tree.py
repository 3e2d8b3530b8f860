"""The compiled per-directory work of a --chown shift (namespacefs._tree, from _tree.c), typed.

    plan    one directory's entries that the shift changes, packed into one record blob
    apply   a blob's records brought from their old state to their new one, or back, each entry's
            state checked first (the C side's docstring says what is followed and crossed: nothing)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import NamedTuple

try:
    from namespacefs import _tree
except ImportError as e:  # pragma: no cover - a broken install
    raise ImportError(
        "namespacefs._tree, the compiled --chown walk, is not built: install with `bash bootstrap.sh` "
        "(or `pip install -e .` with gcc and python3-dev present)", name="namespacefs._tree") from e

from namespacefs.ops.chown_shift.journal import XattrRow

#: per entry name: (xattr name, old value, new value, whether chown drops it)
XattrSpecs = dict[bytes, list[tuple[str, bytes, bytes, bool]]]


class Planned(NamedTuple):
    """One directory's plan: its records, how many, its subdirectories (names) and the
    id-carrying xattrs of its records."""

    entries: bytes
    files: int  # entries recorded
    subdirs: list[bytes]
    xattrs: list[XattrRow]


def open_root(root: bytes) -> int:
    """An fd of the tree's top, that every path is resolved below."""
    return os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def plan(rootfd: int, path: bytes, uid_of: Callable[[int], int], gid_of: Callable[[int], int],
         id_xattrs: tuple[str, ...], xattr_of: Callable[[str, bytes], bytes | None], links: set[int]) -> Planned | None:
    """The plan of directory path (below rootfd); None when it is gone, a symlink or a mount point."""
    got = _tree.plan(rootfd, path, uid_of, gid_of, id_xattrs, xattr_of, links)
    return None if got is None else Planned(*got)


def apply(rootfd: int, path: bytes, entries: bytes, forward: bool, skip: set[bytes] | None,
          xattrs: XattrSpecs | None) -> tuple[int, int, list[tuple[bytes, str]]]:
    """(changed, already in the end state, conflicts [(name, why)]) of one recorded directory."""
    return _tree.apply(rootfd, path, entries, forward, skip, xattrs)
