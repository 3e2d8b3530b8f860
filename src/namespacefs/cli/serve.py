"""`nsfs serve` (the daemon) and `nsfs watch` (lifecycle events, one per line)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import sys
from collections.abc import Callable

from namespacefs.cli import UserError, interval, whole
from namespacefs.kernel import NS_TYPES
from namespacefs.service import DEFAULT_SOCKET
from namespacefs.service.events import KINDS, LIFECYCLE, Event


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--socket", metavar="PATH", default=None,
                        help=f"the API's Unix socket (default $NSFS_SOCKET or {DEFAULT_SOCKET})")
    parser.add_argument("--interval", type=interval, default=300.0, metavar="SECONDS",
                        help="full rescan at least this often (default 300; events and the sweep keep the model current)")
    parser.add_argument("--sweep", type=interval, default=None, metavar="SECONDS",
                        help="re-read every process (fds, sockets, threads, bind mounts) once per this many seconds, "
                             "whatever it costs (default: every 30 s, slower where that would cost more than 0.5%% of "
                             "a core; /api/status says how late): the bound for changes no event reports")
    parser.add_argument("--no-tracepoints", action="store_true",
                        help="do not use the syscall tracepoints (unshare/setns/clone are then seen by the sweep)")
    if command == "serve":
        parser.add_argument("--listen", metavar="[HOST:]PORT",
                            help="also serve HTTP on a loopback TCP port; requests need the bearer token")
        parser.add_argument("--token-file", metavar="PATH",
                            help="the bearer token for --listen (created with a random token if missing; "
                                 "default: token next to the socket)")
        parser.add_argument("--no-netlink", action="store_true", help="do not use the proc connector (rescan only)")
        parser.add_argument("--netlink-rcvbuf", type=_rcvbuf, default=8 << 20, metavar="BYTES",
                            help="receive buffer of the proc-connector socket (default 8 MiB)")
        parser.add_argument("-v", "--verbose", action="store_true", help="log scans and requests")
    else:
        parser.add_argument("-J", "--json", action="store_true", help="one JSON object per line")
        parser.add_argument("-e", "--events", metavar="LIST",
                            help=f"only these events (of {','.join(KINDS)}; default: {','.join(LIFECYCLE)})")
        parser.add_argument("-p", "--processes", action="store_true",
                            help="also process membership: joined and left (one per namespace per fork and exit)")
        parser.add_argument("-t", "--type", metavar="LIST", help="only namespaces of these types")
        parser.add_argument("--no-daemon", action="store_true", help="watch with an own event loop, even if a daemon runs")


def _rcvbuf(text: str) -> int:
    """A socket buffer size the kernel takes (an int for setsockopt; it clamps it further)."""
    return whole("BYTES", 1, 2**31 - 1)(text)


def _check_list(text: str | None, known: tuple[str, ...], what: str) -> str | None:
    if not text:
        return None
    unknown = [t for t in text.split(",") if t.strip() and t.strip() not in known]
    if unknown:
        raise UserError(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(known)})")
    return ",".join(t.strip() for t in text.split(",") if t.strip())


def run(args: argparse.Namespace) -> int:
    if args.socket is not None and not args.socket.strip():
        raise UserError("--socket: an empty path (leave the option out for the default)")
    return serve(args) if args.command == "serve" else watch(args)


def serve(args: argparse.Namespace) -> int:
    from namespacefs.service import client, daemon

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="nsfs serve: %(message)s")
    try:
        opts = daemon.Options(
            socket_path=client.socket_path(args.socket),
            tcp=daemon.parse_listen(args.listen) if args.listen is not None else None,
            token_file=args.token_file, interval=args.interval, netlink=not args.no_netlink, rcvbuf=args.netlink_rcvbuf,
            sweep=args.sweep, trace=not args.no_tracepoints)
        daemon.serve(opts)
    except daemon.ServeError as e:
        raise UserError(str(e)) from None
    except PermissionError as e:
        raise UserError(f"{e.filename or ''}: {e.strerror} (the service runs as root)") from None
    except OSError as e:  # creating the socket's directory, and the like
        where = f"{os.fsdecode(e.filename)}: " if isinstance(e.filename, (str, bytes)) else ""
        raise UserError(f"{where}{e.strerror or e}") from None
    return 0


def watch(args: argparse.Namespace) -> int:
    from namespacefs.service import client

    kinds = _check_list(args.events, KINDS, "event") or ",".join(LIFECYCLE)
    if args.processes:
        kinds = ",".join(k for k in KINDS if k in kinds.split(",") or k in ("joined", "left"))
    types = _check_list(args.type, NS_TYPES, "namespace type")

    def show(e: Event) -> None:
        if (kinds and e.kind not in kinds.split(",")) or (types and e.type not in types.split(",")):
            return
        print(json.dumps(e.to_dict()) if args.json else e.describe(), flush=True)

    if not args.no_daemon:
        try:
            stream = client.stream_events(args.socket, kinds, types)
        except client.DaemonError as e:
            raise UserError(f"the daemon refused: {e}") from None
        if stream is not None:
            for event in stream:
                show(event)
            raise UserError("the daemon went away")
    return _watch_locally(args, show)


def _watch_locally(args: argparse.Namespace, show: Callable[[Event], None]) -> int:
    from namespacefs.service.live import Live

    events: queue.Queue[list[Event]] = queue.Queue()
    from namespacefs.service.sweep import settings

    period, budget = settings(args.sweep)
    live = Live(interval=args.interval, sweep=period, sweep_budget=budget, trace=not args.no_tracepoints)
    live.bus.subscribe(events.put)
    live.start()
    for problem in (live.netlink_error, live.trace_watch.error if live.trace_watch else None):
        if problem:
            print(f"nsfs watch: {problem}", file=sys.stderr)
    try:
        while True:
            for event in events.get():
                show(event)
    finally:
        live.stop()
