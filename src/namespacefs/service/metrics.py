"""Prometheus metrics for one host, read from the live model at scrape time (prometheus-client).

Bounded cardinality by default: every label takes a fixed, small set of values (namespace types,
holder kinds, event kinds), so a container host that makes and destroys thousands of namespaces
an hour does not make thousands of series. Per-user-namespace series are opt-in, per scrape job
(`/metrics?userns=1`), keyed by the 64-bit namespace id, with the changing facts (name, inode) in
a separate `_info` series to join on, so a rename does not split a series.

    nsfs_build_info{version,python}              1
    nsfs_namespaces{type}                        namespaces by type
    nsfs_namespaces_by_holder{type,holder}       ... by the strongest reason each is alive (see HOLDER_KINDS)
    nsfs_processes                               processes seen
    nsfs_nproc_usage_ratio                       highest charged tasks / RLIMIT_NPROC over (user namespace, uid)
    nsfs_nproc_at_limit                          (user namespace, uid) pairs whose next fork fails
    nsfs_uid_map_overlaps{kind}                  pairs of unrelated user namespaces sharing host ids
    nsfs_discovery_duration_seconds              histogram of full-scan durations
    nsfs_snapshot_timestamp_seconds              when the current snapshot was taken
    nsfs_updates_total{kind}                     model updates: initial/full/overrun scans, process/settle re-reads
    nsfs_scan_errors_total
    nsfs_proc_events_total{event}                fork/exec/exit (and thread: a new thread) events read from the proc connector
    nsfs_netlink_overruns_total                  times the kernel dropped events (each one forces a rescan)
    nsfs_children_cpu_seconds_total              CPU of the daemon's reaped children (the full-scan child)
    nsfs_traced_calls_total{syscall}             successful unshare/setns/clone/clone3 read from the tracepoints
    nsfs_events_total{event,type}                lifecycle events: created, renamed, destroyed
    nsfs_process_changes_total{event}            processes that joined / left namespaces (one per process
                                                 and model update, not one per namespace: a fork is 1)
    nsfs_event_subscribers                       connected event-stream clients
    process_*, python_info                       the daemon process itself (prometheus-client's collectors)
  with ?userns=1, also:
    nsfs_user_namespace_info{id,inode,name,path,owner_uid,level}  1
    nsfs_user_namespace_processes{id}            processes in each user namespace
    nsfs_user_namespace_nproc_usage_ratio{id}    its highest charged / RLIMIT_NPROC
"""

from __future__ import annotations

import platform
import resource
import threading
from collections import Counter
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from namespacefs import accounting
from namespacefs.kernel import NS_TYPES
from namespacefs.model import HOLDER_KINDS, Snapshot
from namespacefs.service.events import LIFECYCLE, Bus, Event
from namespacefs.service.live import Live

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Event kinds counted per namespace in nsfs_events_total are events.LIFECYCLE; these are process moves.
MOVES = ("joined", "left")


def strongest_holder(kinds: tuple[str, ...]) -> str:
    """The first holder kind in HOLDER_KINDS order ('none' for a namespace without holders)."""
    return kinds[0] if kinds else "none"


def nproc_usage(acct: accounting.Accounting) -> dict[int, float]:
    """User namespace inode -> its highest charged tasks / soft RLIMIT_NPROC among its uids (only
    uids with a limit; the kernel's check, which CAP_SYS_RESOURCE/CAP_SYS_ADMIN processes escape)."""
    usage: dict[int, float] = {}
    for user in acct.users:
        ratios = [u.charged / u.nproc_limit for u in user.uids if u.nproc_limit]
        if ratios:
            usage[user.namespace.inode] = max(ratios)
    return usage


class EventCounter:
    """Counts what the bus publishes: lifecycle events by (kind, type), and process moves by the
    processes involved (one per process per published batch, a batch being one model update)."""

    def __init__(self, bus: Bus) -> None:
        self._lock = threading.Lock()
        self.lifecycle: Counter[tuple[str, str]] = Counter()
        self.moves: Counter[str] = Counter()
        bus.subscribe(self.count)

    def count(self, batch: list[Event]) -> None:  # runs in the publisher's thread: only counting
        moved: dict[str, set[int]] = {kind: set() for kind in MOVES}
        lifecycle = Counter((e.kind, e.type) for e in batch if e.kind in LIFECYCLE)
        for e in batch:
            if e.kind in moved and e.pid is not None:
                moved[e.kind].add(e.pid)
        with self._lock:
            self.lifecycle.update(lifecycle)
            for kind, pids in moved.items():
                self.moves[kind] += len(pids)


class LiveCollector(Collector):
    def __init__(self, live: Live, clients: Callable[[], int]) -> None:
        self.live, self.clients = live, clients
        self._buckets = [0] * (len(BUCKETS) + 1)
        self._sum = 0.0
        self.events = EventCounter(live.bus)

    def accounts(self, snap: Snapshot) -> accounting.Accounting:
        """Once per model change: reads /proc/PID/limits of every process (no forks: limits=False)."""
        found: accounting.Accounting = self.live.derived("metrics-accounting", lambda s: accounting.compute(s, limits=False))
        return found

    def _overlap_counts(self, snap: Snapshot) -> dict[str, int]:
        counts = {"uid": 0, "gid": 0}
        for o in self.accounts(snap).overlaps:
            counts[o.kind] = counts.get(o.kind, 0) + 1
        return counts

    def collect(self) -> Iterator[Metric]:
        import namespacefs

        live = self.live
        snap = live.current()
        info = GaugeMetricFamily("nsfs_build_info", "The namespacefs build serving these metrics", labels=["version", "python"])
        info.add_metric([namespacefs.__version__, platform.python_version()], 1)
        yield info
        by_type = GaugeMetricFamily("nsfs_namespaces", "Namespaces by type", labels=["type"])
        by_holder = GaugeMetricFamily("nsfs_namespaces_by_holder",
                                      "Namespaces by type and the strongest reason each is alive (the first of its holder "
                                      "kinds in the order process, zombie, task, pid_for_children, time_for_children, fd, "
                                      "bindmount, socket, parent, owner, listns)", labels=["type", "holder"])
        counts = dict.fromkeys(NS_TYPES, 0)
        held: Counter[tuple[str, str]] = Counter()
        for ns in snap:
            counts[ns.type] = counts.get(ns.type, 0) + 1
            held[(ns.type, strongest_holder(ns.kinds))] += 1
        for t, n in counts.items():
            by_type.add_metric([t], n)
        order = {k: i for i, k in enumerate((*HOLDER_KINDS, "none"))}
        for (t, kind), n in sorted(held.items(), key=lambda item: (item[0][0], order[item[0][1]])):
            by_holder.add_metric([t, kind], n)
        yield by_type
        yield by_holder
        yield GaugeMetricFamily("nsfs_processes", "Processes seen in the last scan", value=len(snap.processes))
        acct = self.accounts(snap)
        usage = nproc_usage(acct)
        yield GaugeMetricFamily("nsfs_nproc_usage_ratio",
                                "Highest tasks charged to a (user namespace, uid) counter over its soft RLIMIT_NPROC",
                                value=max(usage.values(), default=0.0))
        yield GaugeMetricFamily("nsfs_nproc_at_limit", "(user namespace, uid) pairs at their RLIMIT_NPROC: forks fail",
                                value=sum(u.at_limit for user in acct.users for u in user.uids))
        overlaps = GaugeMetricFamily("nsfs_uid_map_overlaps",
                                     "Pairs of unrelated user namespaces whose id maps share host ids", labels=["kind"])
        for kind, n in self._overlap_counts(snap).items():
            overlaps.add_metric([kind], n)
        yield overlaps
        yield self._durations()
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
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        yield CounterMetricFamily("nsfs_children_cpu_seconds", "CPU of the daemon's reaped children (full-scan child)",
                                  value=children.ru_utime + children.ru_stime)
        calls = CounterMetricFamily("nsfs_traced_calls", "Successful syscalls read from the tracepoints", labels=["syscall"])
        traced = live.trace_watch.counts if live.trace_watch is not None else {}
        for name in ("unshare", "setns", "clone", "clone3"):
            calls.add_metric([name], traced.get(name, 0))
        yield calls
        yield from self._events()
        yield GaugeMetricFamily("nsfs_event_subscribers", "Connected event-stream clients", value=self.clients())

    def _durations(self) -> Metric:
        for d in self.live.take_durations():
            self._sum += d
            self._buckets[next((i for i, b in enumerate(BUCKETS) if d <= b), len(BUCKETS))] += 1
        cumulative, running = [], 0
        for bound, n in zip([*map(str, BUCKETS), "+Inf"], self._buckets, strict=True):
            running += n
            cumulative.append((bound, running))
        return HistogramMetricFamily("nsfs_discovery_duration_seconds", "Duration of full discovery scans",
                                     buckets=cumulative, sum_value=self._sum)

    def _events(self) -> Iterator[Metric]:
        with self.events._lock:
            lifecycle, moves = dict(self.events.lifecycle), dict(self.events.moves)
        events = CounterMetricFamily("nsfs_events", "Lifecycle events published (created, renamed, destroyed)",
                                     labels=["event", "type"])
        for kind in LIFECYCLE:
            for t in NS_TYPES:
                events.add_metric([kind, t], lifecycle.get((kind, t), 0))
        yield events
        changes = CounterMetricFamily("nsfs_process_changes",
                                      "Processes that joined or left namespaces (one per process and model update)",
                                      labels=["event"])
        for kind in MOVES:
            changes.add_metric([kind], moves.get(kind, 0))
        yield changes


class UsernsCollector(Collector):
    """The opt-in per-user-namespace series (one set per user namespace: unbounded on a busy host)."""

    def __init__(self, live: Live, base: LiveCollector) -> None:
        self.live, self.base = live, base

    def collect(self) -> Iterator[Metric]:
        snap = self.live.current()
        info = GaugeMetricFamily("nsfs_user_namespace_info", "A user namespace's changing facts, to join on id",
                                 labels=["id", "inode", "name", "path", "owner_uid", "level"])
        procs = GaugeMetricFamily("nsfs_user_namespace_processes", "Processes per user namespace", labels=["id"])
        ratio = GaugeMetricFamily("nsfs_user_namespace_nproc_usage_ratio",
                                  "Highest tasks charged / soft RLIMIT_NPROC among the uids of a user namespace",
                                  labels=["id"])
        usage = nproc_usage(self.base.accounts(snap))
        for ns in sorted(snap.of_type("user"), key=lambda n: n.inode):
            ident = str(ns.id) if ns.id is not None else f"inode:{ns.inode}"  # no NS_GET_ID: the inode stands in
            info.add_metric([ident, str(ns.inode), ns.name or "", ns.path or "",
                             "" if ns.owner_uid is None else str(ns.owner_uid), str(ns.level)], 1)
            procs.add_metric([ident], len(ns.processes))
            if ns.inode in usage:
                ratio.add_metric([ident], usage[ns.inode])
        yield info
        yield procs
        yield ratio


class Registries:
    """The default registry (bounded) and the one with the per-user-namespace series too."""

    def __init__(self, live: Live, clients: Callable[[], int]) -> None:
        base = LiveCollector(live, clients)
        own = (ProcessCollector(registry=None), PlatformCollector(registry=None))
        self.default = CollectorRegistry(auto_describe=False)
        self.userns = CollectorRegistry(auto_describe=False)
        for collector in (base, *own):
            self.default.register(collector)
            self.userns.register(collector)
        self.userns.register(UsernsCollector(live, base))

    def render(self, userns: bool = False) -> bytes:
        return generate_latest(self.userns if userns else self.default)


def registry_for(live: Live, clients: Callable[[], int]) -> Registries:
    """The registries for a live model; `clients` counts the open event streams (the bus has one
    more subscriber: this module's own event counter)."""
    return Registries(live, clients)


def render(registries: Registries, userns: bool = False) -> bytes:
    return registries.render(userns)
