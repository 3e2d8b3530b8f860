"""namespacefs: see, name and act on every Linux namespace.

Copyright (C) the namespacefs developers. Free software under the GNU General Public License,
version 2 or (at your option) any later version (GPL-2.0-or-later); see the file LICENSE.

`namespacefs.__version__` is the installed package's version, from its metadata (pyproject.toml is
the one place it is written)."""

from __future__ import annotations


def __getattr__(name: str) -> str:
    # read on first use only: importlib.metadata costs ~40 ms of imports that `nsfs ls` must not pay
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = version("namespacefs")
        except PackageNotFoundError:  # run from a source tree that was never installed
            found = "0+unknown"
        globals()["__version__"] = found
        return found
    raise AttributeError(f"module 'namespacefs' has no attribute {name!r}")
