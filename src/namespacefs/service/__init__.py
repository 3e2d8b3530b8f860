"""The live service (`nsfs serve`): one up-to-date snapshot kept by process events from the kernel's
proc connector plus a periodic full rescan, served over HTTP (JSON API, server-sent events,
Prometheus metrics, a web page).

    live.Live         the live model: scanner thread, proc-connector listener, event bus
    events            lifecycle events (created/destroyed/renamed/joined/left) from two snapshots
    app.make_app      the FastAPI application
    daemon.serve      runs it all on a Unix socket (and optionally loopback TCP with a token)
    client            fetch_snapshot() and stream_events() for the CLI and FUSE
"""

import os

DEFAULT_SOCKET = "/run/namespacefs/api.sock"


def outside_name(socket_path: str) -> str:
    """The socket's second name, beside its directory (/run/namespacefs-api.sock for the default):
    the namespacefs filesystem mounted on the socket's directory (/run/namespacefs is the default of
    both) would hide the first name from every process started after the mount."""
    directory, name = os.path.split(os.path.abspath(socket_path))
    return f"{directory.rstrip('/')}-{name}"
