"""Metrics for a fleet, scraped from a real daemon: bounded series by default, per-user-namespace
series only when asked (joined on id through an _info series), the build and the daemon's own
process, lifecycle events by type and process moves per process; the alert rules checked by
Debian's promtool against the names a real scrape has."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from namespacefs.discover import discover
from namespacefs.kernel import NS_TYPES
from namespacefs.service.events import Bus, events_between
from namespacefs.service.metrics import EventCounter
from test_service import Daemon, Holder, holders  # noqa: F401  (holders: the fixture)

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "contrib" / "namespacefs.rules.yml"
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = Daemon(tmp_path_factory.mktemp("nsfs-metrics"))
    yield d
    d.stop()


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        m = SAMPLE.match(line)
        assert m, line
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        out.append((m.group(1), labels, float(m.group(3))))
    return out


def values(text: str, name: str, **match: str) -> list[float]:
    return [v for n, labels, v in samples(text) if n == name and all(labels.get(k) == x for k, x in match.items())]


def test_default_series_are_bounded_and_the_user_namespace_series_are_opt_in(
        daemon: Daemon, holders: Callable[..., Holder]) -> None:  # noqa: F811
    h = holders("--user", "--map-root-user")
    inode, ident = h.ns("user")
    daemon.wait_for(lambda: daemon.has(inode))
    text = daemon.http.get("/metrics").text
    got = samples(text)
    names = {n for n, _, _ in got}
    assert not any(n.startswith("nsfs_user_namespace") for n in names), "per-user-namespace series only on request"
    # every label value comes from a fixed set: no ids, inodes, names or pids
    for name, labels, _ in got:
        for key, value in labels.items():
            assert not re.fullmatch(r"\d{5,}", value), (name, key, value)
    assert values(text, "nsfs_build_info", version=metadata.version("namespacefs")) == [1.0]
    for own in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds", "process_start_time_seconds"):
        assert values(text, own) and values(text, own)[0] > 0, own
    for t in NS_TYPES:  # the holder split adds up to the per-type count
        assert sum(values(text, "nsfs_namespaces_by_holder", type=t)) == values(text, "nsfs_namespaces", type=t)[0], t
    assert sum(values(text, "nsfs_namespaces_by_holder", type="user", holder="process")) >= 2  # ours and the host's
    soft = Path("/proc/self/limits").read_text().split("Max processes")[1].split()[0]
    ratio = values(text, "nsfs_nproc_usage_ratio")[0]
    assert (0 < ratio < 1) if soft != "unlimited" else ratio == 0, (soft, ratio)  # our processes count, under a limit
    assert values(text, "nsfs_nproc_at_limit") == [0.0]
    assert not values(text, "nsfs_events_total", event="joined"), "joined is counted per process, not per namespace"

    full = daemon.http.get("/metrics", params={"userns": "1"}).text
    assert values(full, "nsfs_user_namespace_processes", id=str(ident)) == [1.0]
    info = [labels for n, labels, v in samples(full) if n == "nsfs_user_namespace_info" and labels["id"] == str(ident)]
    assert len(info) == 1 and info[0]["inode"] == str(inode) and info[0]["owner_uid"] == "0", info
    assert values(full, "nsfs_user_namespace_nproc_usage_ratio", id=str(ident))
    assert len(values(full, "nsfs_user_namespace_processes")) == len(values(full, "nsfs_user_namespace_info"))


def test_a_fork_is_one_process_change_not_one_per_namespace(holders: Callable[..., Holder]) -> None:  # noqa: F811
    """A new process joins a namespace of every type: 7 or 8 `joined` events on the bus, one process."""
    before = discover()
    h = holders("--uts")
    after = discover()
    mine = [e for e in events_between(before, after, 0.0) if e.pid == h.pid]
    joined = [e for e in mine if e.kind == "joined"]
    assert len(joined) >= 6 and len({e.type for e in joined}) == len(joined), joined
    bus = Bus()
    counter = EventCounter(bus)
    bus.publish(mine)
    assert counter.moves["joined"] == 1
    assert counter.lifecycle[("created", "uts")] == 1  # its new uts namespace, counted by type
    bus.publish([e for e in events_between(after, discover(), 0.0) if e.pid == h.pid])  # nothing new: nothing counted
    assert counter.moves["joined"] == 1


def test_the_daemon_counts_a_new_process_once(daemon: Daemon, holders: Callable[..., Holder]) -> None:  # noqa: F811
    def joined() -> float:
        return values(daemon.http.get("/metrics").text, "nsfs_process_changes_total", event="joined")[0]

    def created_uts() -> float:
        return values(daemon.http.get("/metrics").text, "nsfs_events_total", event="created", type="uts")[0]

    start, uts = joined(), created_uts()
    h = holders("--uts")
    daemon.wait_for(lambda: daemon.has(h.ns("uts")[0]))
    daemon.wait_for(lambda: created_uts() >= uts + 1)
    assert joined() >= start + 1


def promtool() -> str:
    exe = shutil.which("promtool") or str(Path(sys.executable).parent / "promtool")
    if not Path(exe).exists():
        pytest.skip("promtool is missing (bootstrap.sh unpacks it from Debian's prometheus package)")
    return exe


def rules() -> list[dict[str, object]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def test_the_alert_rules_pass_promtool_and_fire_on_the_series_they_watch(tmp_path: Path) -> None:
    exe = promtool()
    checked = subprocess.run([exe, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    by_name = {r["alert"]: r for r in rules()}
    leak, nproc = by_name["NamespacefsNetNamespacesLeaking"], by_name["NamespacefsUserNamespaceNearProcessLimit"]

    def expect(rule: dict[str, object], labels: dict[str, str]) -> dict[str, object]:
        return {"exp_labels": {**labels, **rule["labels"]}, "exp_annotations": rule["annotations"]}  # type: ignore[dict-item]

    held = {"type": "net", "holder": "bindmount", "instance": "web-1"}
    tests = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                # one more leaked netns a minute on web-1; a steady 20 on web-2 (no growth: no alert)
                {"series": 'nsfs_namespaces_by_holder{type="net",holder="bindmount",instance="web-1"}', "values": "0+1x300"},
                {"series": 'nsfs_namespaces_by_holder{type="net",holder="bindmount",instance="web-2"}', "values": "20x300"},
                # web-1's busiest uid jumps to 95% of its RLIMIT_NPROC after an hour
                {"series": 'nsfs_nproc_usage_ratio{instance="web-1"}', "values": "0.5x60 0.95x120"},
                {"series": 'nsfs_nproc_usage_ratio{instance="web-2"}', "values": "0.2x180"},
            ],
            "alert_rule_test": [
                {"eval_time": "30m", "alertname": leak["alert"], "exp_alerts": []},  # above 10 since 11m: pending
                {"eval_time": "60m", "alertname": leak["alert"], "exp_alerts": [expect(leak, held)]},
                {"eval_time": "65m", "alertname": nproc["alert"], "exp_alerts": []},  # at 95% for 5 minutes only
                {"eval_time": "90m", "alertname": nproc["alert"], "exp_alerts": [expect(nproc, {"instance": "web-1"})]},
            ],
        }],
    }
    spec = tmp_path / "rules_test.yml"
    spec.write_text(yaml.safe_dump(tests))
    tested = subprocess.run([exe, "test", "rules", str(spec)], capture_output=True, text=True, timeout=120)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_the_rules_use_metrics_a_real_scrape_has_and_the_docs_show_them(daemon: Daemon) -> None:
    text = daemon.http.get("/metrics").text
    names = {n for n, _, _ in samples(text)}
    used = {m for r in rules() for m in re.findall(r"\bnsfs_[a-z_]+", str(r["expr"]))}
    assert used and used <= names, used - names
    docs = (ROOT / "docs" / "service.md").read_text()
    assert RULES.read_text().strip() in docs, "docs/service.md shows the shipped rules file"
    scrape = re.search(r"```yaml\n(scrape_configs:.*?)```", docs, re.S)
    assert scrape is not None
    config = yaml.safe_load(scrape.group(1))
    assert config["scrape_configs"][0]["metrics_path"] == "/metrics"
