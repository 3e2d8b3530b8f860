"""The error boundary of every FUSE request: an unexpected error fails that request (EIO) and is
logged, never the whole filesystem."""

from __future__ import annotations

import errno
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from namespacefs.fs.wire import FUSEError

log = logging.getLogger("namespacefs.fs")

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def guarded(op: F) -> F:
    """An unexpected error in one request fails that request (EIO), never the whole filesystem."""
    @functools.wraps(op)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await op(*args, **kwargs)
        except FUSEError:
            raise
        except Exception:
            log.exception("%s failed", op.__name__)
            raise FUSEError(errno.EIO) from None
    return wrapper  # type: ignore[return-value]
