"""Prometheus metrics for one host, read from the live model at scrape time (prometheus-client).

    nsfs_namespaces{type}                        namespaces by type
    nsfs_processes                               processes seen
    nsfs_user_namespace_processes{inode,id,name} processes per user namespace
    nsfs_uid_map_overlaps{kind}                  pairs of unrelated user namespaces sharing host ids
    nsfs_discovery_duration_seconds              histogram of full-scan durations
    nsfs_snapshot_timestamp_seconds              when the current snapshot was taken
    nsfs_updates_total{kind}                     model updates: initial/full/overrun scans, process/settle re-reads
    nsfs_scan_errors_total
    nsfs_proc_events_total{event}                fork/exec/exit events read from the proc connector
    nsfs_netlink_overruns_total                  times the kernel dropped events (each one forces a rescan)
    nsfs_events_total{event,type}                lifecycle events published
    nsfs_event_subscribers                       connected event-stream clients
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from namespacefs import accounting
from namespacefs.kernel import NS_TYPES
from namespacefs.model import Snapshot
from namespacefs.service.live import Live

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class LiveCollector(Collector):
    def __init__(self, live: Live) -> None:
        self.live = live
        self._buckets = [0] * (len(BUCKETS) + 1)
        self._sum = 0.0
        self._overlaps: tuple[Snapshot, dict[str, int]] | None = None

    def _overlap_counts(self, snap: Snapshot) -> dict[str, int]:
        if self._overlaps is None or self._overlaps[0] is not snap:
            found = accounting.find_overlaps(snap.of_type("user"), snap, accounting.kernel_release(snap.kernel))
            counts = {"uid": 0, "gid": 0}
            for o in found:
                counts[o.kind] = counts.get(o.kind, 0) + 1
            self._overlaps = (snap, counts)
        return self._overlaps[1]

    def collect(self) -> Iterator[Metric]:
        live = self.live
        snap = live.current()
        by_type = GaugeMetricFamily("nsfs_namespaces", "Namespaces by type", labels=["type"])
        counts = dict.fromkeys(NS_TYPES, 0)
        for ns in snap:
            counts[ns.type] = counts.get(ns.type, 0) + 1
        for t, n in counts.items():
            by_type.add_metric([t], n)
        yield by_type
        yield GaugeMetricFamily("nsfs_processes", "Processes seen in the last scan", value=len(snap.processes))
        per_user = GaugeMetricFamily("nsfs_user_namespace_processes", "Processes per user namespace",
                                     labels=["inode", "id", "name"])
        for ns in snap.of_type("user"):
            per_user.add_metric([str(ns.inode), str(ns.id or ""), ns.name or ""], len(ns.processes))
        yield per_user
        overlaps = GaugeMetricFamily("nsfs_uid_map_overlaps",
                                     "Pairs of unrelated user namespaces whose id maps share host ids", labels=["kind"])
        for kind, n in self._overlap_counts(snap).items():
            overlaps.add_metric([kind], n)
        yield overlaps
        for d in live.take_durations():
            self._sum += d
            self._buckets[next((i for i, b in enumerate(BUCKETS) if d <= b), len(BUCKETS))] += 1
        cumulative, running = [], 0
        for bound, n in zip([*map(str, BUCKETS), "+Inf"], self._buckets, strict=True):
            running += n
            cumulative.append((bound, running))
        yield HistogramMetricFamily("nsfs_discovery_duration_seconds", "Duration of full discovery scans",
                                    buckets=cumulative, sum_value=self._sum)
        yield GaugeMetricFamily("nsfs_snapshot_timestamp_seconds", "When the current snapshot was taken",
                                value=snap.taken_at)
        scans = CounterMetricFamily("nsfs_updates", "Model updates by kind (full scans and partial re-reads)",
                                    labels=["kind"])
        for reason, n in sorted(live.scans.items()):
            scans.add_metric([reason], n)
        yield scans
        yield CounterMetricFamily("nsfs_scan_errors", "Scans or updates that failed", value=live.scan_errors)
        proc = CounterMetricFamily("nsfs_proc_events", "Process events read from the proc connector", labels=["event"])
        for name in ("fork", "exec", "exit"):
            proc.add_metric([name], live.proc_events.get(name, 0))
        yield proc
        yield CounterMetricFamily("nsfs_netlink_overruns", "Times the kernel dropped process events", value=live.overruns)
        events = CounterMetricFamily("nsfs_events", "Lifecycle events published", labels=["event", "type"])
        for (kind, nstype), n in sorted(live.bus.counts.items()):
            events.add_metric([kind, nstype], n)
        yield events
        yield GaugeMetricFamily("nsfs_event_subscribers", "Connected event-stream clients", value=live.bus.subscribers)


def registry_for(live: Live) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LiveCollector(live))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
