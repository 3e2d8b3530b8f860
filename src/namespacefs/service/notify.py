"""sd_notify(3) for a Type=notify systemd unit, with a plain socket (no libsystemd binding).

The protocol (sd_notify(3), "systemd notification protocol"): the service manager passes the path
of an AF_UNIX datagram socket in $NOTIFY_SOCKET (a leading '@' names an abstract socket); the
service sends newline-separated VAR=VALUE assignments in one datagram: READY=1 when it serves,
STATUS=text for `systemctl status`, STOPPING=1 when it begins to shut down. Without
$NOTIFY_SOCKET (not started by systemd, or not Type=notify) nothing is sent."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("namespacefs.service")


def notify_address(env: Mapping[str, str] | None = None) -> str | None:
    """The socket address from $NOTIFY_SOCKET in the form socket.connect() takes, or None."""
    value = (os.environ if env is None else env).get("NOTIFY_SOCKET", "")
    if value.startswith("@"):
        return "\0" + value[1:]  # abstract namespace
    if value.startswith("/"):
        return value
    if value:  # e.g. vsock:CID:PORT (systemd 253+, for VMs): not a transport this daemon runs on
        log.warning("NOTIFY_SOCKET=%s is not a Unix socket path; not notifying the service manager", value)
    return None


def sd_notify(state: str, env: Mapping[str, str] | None = None) -> bool:
    """Send `state` ('READY=1', 'STATUS=...', several joined by newlines) to the service manager.
    True if it was sent; False without $NOTIFY_SOCKET. A manager that went away is logged, never
    raised: notification must not take the daemon down."""
    address = notify_address(env)
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as e:
        log.warning("cannot notify the service manager at %s: %s", address.lstrip("\0"), e.strerror or e)
        return False
    return True
