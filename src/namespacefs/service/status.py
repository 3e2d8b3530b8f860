"""What /api/status says about the live model: its state, and how each kind of change reaches it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from namespacefs.service.live import Live


def mechanisms(live: Live) -> dict[str, dict[str, object]]:
    """How each kind of change reaches the model, and what is missing (for /api/status)."""
    net, trace = live.netlink_watch, live.trace_watch
    return {
        "proc_connector": {"running": live.netlink, "error": live.netlink_error,
                           "events": dict(net.counts) if net else {}},
        "tracepoints": {"running": live.tracing, "error": trace.error if trace else None,
                        "calls": dict(trace.counts) if trace else {},
                        "mounted_tracefs": trace.mounted_tracefs if trace else None},
        "mountinfo_poll": live.mount_watch.status() if live.mount_watch else {"running": False, "error": "not started"},
        "sweep": live.sweeper.status(),
        "full_scan": {"running": True, "interval": live.interval},
        "naming": {"whole_cpu": live.naming.whole, "whole_passes": live.naming.passes,
                   "whole_every_under_churn": live.naming.gap, "every_at_rest": live.naming.periodic(live.rename_every)},
    }


def status(live: Live) -> dict[str, object]:
    snap = live.current()
    return {
        "boot_id": snap.boot_id, "kernel": snap.kernel, "taken_at": live.as_of(), "duration": snap.duration,
        "changed_at": snap.taken_at,
        "namespaces": len(snap.namespaces), "processes": len(snap.processes), "started_at": live.started_at,
        "full_taken_at": live.full_taken_at, "full_duration": live.last_full_duration,
        "scans": dict(live.scans), "scan_errors": live.scan_errors, "netlink": live.netlink,
        "netlink_error": live.netlink_error, "overruns": live.overruns, "proc_events": dict(live.proc_events),
        "subscribers": live.bus.subscribers, "interval": live.interval, "sweep": live.sweep,
        "tracepoints": live.tracing, "mechanisms": mechanisms(live),
        "last_update": {"seconds": live.last_update[0], "naming": live.last_update[1]},
    }
