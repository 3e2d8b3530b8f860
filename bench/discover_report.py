"""The text of bench/RESULTS-discover.md from what bench/discover_bench.py measured."""

from __future__ import annotations

import collections
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from typing import Any


def ratio(a: list[float], b: list[float]) -> float:
    """The median of the ratios of interleaved pairs."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def fit(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Least squares y = a + b x; returns (a, b, r²)."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    a = my - b * mx
    ss_res = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys, strict=True))
    ss_tot = sum((y - my) ** 2 for y in ys) or 1.0
    return a, b, 1 - ss_res / ss_tot


def spread(values: list[float]) -> str:
    return f"{min(values):.3f}–{max(values):.3f}"


def machine() -> str:
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    with open("/proc/meminfo") as f:
        mem = int(f.readline().split()[1]) // 1024
    lsns = subprocess.run(["lsns", "--version"], capture_output=True, text=True).stdout.strip()
    return (f"- CPU: {os.cpu_count()} × {cpu}; RAM {mem} MiB\n- Kernel: Linux {platform.release()}\n"
            f"- Python {platform.python_version()} ({sys.executable}); {lsns}\n"
            f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")


SHAPE_TEXT = {
    "sets": [
        "N processes in N/10 namespace sets. Each set: a leader with a private mount namespace (tmpfs + one",
        "`ip netns add`-style nsfs bind mount of a net namespace nothing else holds), then a rotating mix of",
        "user/net/uts/ipc/cgroup/pid/time namespaces; 9 members forked into them. Every process holds ~8 fds",
        "(/dev/null, a file, a socketpair, a UDP socket, stdio); every 5th member holds an fd to a net namespace",
        "it is not in, every 5th a socket in one, every 5th fds to its own uts and ipc namespaces; every 4th set",
        "has a member with 5 threads, one in its own uts namespace. \"hidden\" = those fd-, socket-, thread- and",
        "bind-mount-held namespaces, which no process is in.",
    ],
    "dense": [
        "N processes, each in its own uts, ipc, net, mnt and cgroup namespaces (5 per process: sandboxes,",
        "browsers, systemd services with `Private*=`, single-process containers); each holds /dev/null and a",
        "UDP socket besides stdio.",
    ],
}


def write_results(results: list[dict[str, Any]], extra: dict[str, Any], repeat: int,
                  failures: list[tuple[str, str]]) -> str:
    """RESULTS-discover.md from the measurements (the runs that failed and were retried last)."""
    lines = _header(extra, repeat)
    for shape in dict.fromkeys(r["shape"] for r in results):
        lines += _shape_section(shape, [r for r in results if r["shape"] == shape])
    lines += _profile_sections(extra)
    if failures:
        lines += ["## Failed runs (retried)", "", *[f"- `{cmd}`: {msg}" for cmd, msg in failures], ""]
    return "\n".join(lines)


def _header(extra: dict[str, Any], repeat: int) -> list[str]:
    lines = [
        "# Discovery benchmark: `nsfs ls --json` vs `lsns -J`", "",
        "Produced by `bench/discover_bench.py` (synthetic hosts: `bench/synthetic.py`); how to run it:",
        "`.venv/bin/python bench/discover_bench.py --help`. Numbers are wall times of a fresh process per run",
        "(\"cold\": NSFS_NO_DAEMON=1, so always a scan, never a daemon's snapshot; names in a temp NSFS_DB; page",
        f"cache warm), {repeat} alternating runs of each command per shape and N, on the same synthetic host in the",
        "same run. nsfs/lsns is the median of the ratios of the interleaved pairs.", "",
    ]
    if extra.get("preliminary"):
        lines += ["**Preliminary: measured on a shared, loaded machine** (other work ran beside the bench: see the",
                  "load averages). Use the ratios for guidance only; the final numbers come from a quiet machine.", ""]
    lines += ["## Machine", "", machine(), ""]
    if "small" in extra:
        sm = extra["small"]
        nm, lm = statistics.median(sm["nsfs"]), statistics.median(sm["lsns"])
        lines += ["## Small host (no synthetic processes)", "",
                  f"The host as it is: {sm['processes']} processes, {sm['namespaces']} namespaces (in process links). "
                  f"`nsfs ls` {nm * 1e3:.0f} ms ({spread(sm['nsfs'])} s), `lsns` {lm * 1e3:.0f} ms "
                  f"({spread(sm['lsns'])} s); load {sm['load']}.", ""]
    return lines


def _shape_section(shape: str, rows: list[dict[str, Any]]) -> list[str]:
    lines = [f"## Shape \"{shape}\"", "", *SHAPE_TEXT[shape], "",
             "| N | procs | threads | fds | mounts | namespaces | nsfs median s (spread) | lsns median s (spread) "
             "| nsfs/lsns | discover() s | ns found nsfs | ns found lsns | hidden found nsfs / lsns |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        nm, lm = statistics.median(r["nsfs"]), statistics.median(r["lsns"])
        lines.append(
            f"| {r['n']} | {r['processes']} | {r['threads']} | {r['fds']} | {r['mounts']} | {r['namespaces']} "
            f"| {nm:.3f} ({spread(r['nsfs'])}) | {lm:.3f} ({spread(r['lsns'])}) | {ratio(r['nsfs'], r['lsns']):.2f} "
            f"| {statistics.median(r['discover']):.3f} | {r['nsfs_found']} | {r['lsns_found']} "
            f"| {r['hidden_nsfs']} / {r['hidden_lsns']} of {r['hidden']} |")
    lines += ["", "Like for like (`nsfs ls --json --sources process,bindmount`: what util-linux 2.38's lsns looks at)"
              " and CPU time (user + system):", "",
              "| N | like-for-like wall s | its ratio to lsns | nsfs CPU s | lsns CPU s | CPU ratio | load before → after |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['n']} | {statistics.median(r['like']):.3f} | {ratio(r['like'], r['lsns']):.2f} "
                     f"| {statistics.median(r['nsfs_cpu']):.3f} | {statistics.median(r['lsns_cpu']):.3f} "
                     f"| {ratio(r['nsfs_cpu'], r['lsns_cpu']):.2f} | {r['load']} |")
    return lines + _found_lines(rows) + _unit_lines(rows) + [""]


def _found_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["", "Finds strictly more:", ""]
    for r in rows:
        strictly = r["nsfs_found"] >= r["lsns_found"] and not r["only_lsns"]
        lines.append(f"- N={r['n']}: nsfs finds {r['only_nsfs']} namespaces lsns does not, lsns finds "
                     f"{len(r['only_lsns'])} nsfs does not ({'none missed' if strictly else 'SOME MISSED'}"
                     + (f": {'; '.join(r['only_lsns'][:5])}" if r["only_lsns"] else "") + "); hidden namespaces "
                     f"with a wrong or missing holder kind in nsfs: {len(r['wrong_holders'])}"
                     + (f" ({', '.join(r['wrong_holders'][:5])})" if r["wrong_holders"] else ""))
    return lines


def _unit_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["", "Cost per unit (units = processes + threads + fds + mounts + namespaces, whole host):", "",
             "| N | units | nsfs µs/unit | discover() µs/unit | lsns µs/unit |", "|---|---|---|---|---|"]
    for r in rows:
        u = r["units"]
        lines.append(f"| {r['n']} | {u} | {statistics.median(r['nsfs']) / u * 1e6:.1f} "
                     f"| {statistics.median(r['discover']) / u * 1e6:.1f} | {statistics.median(r['lsns']) / u * 1e6:.1f} |")
    if len(rows) >= 2:
        lines += ["", "Least-squares fit over every run (t = a + b·units):", ""]
        for label, key in (("nsfs ls --json", "nsfs"), ("discover()", "discover"), ("lsns -J", "lsns")):
            px = [float(r["units"]) for r in rows for _ in r[key]]
            py = [t for r in rows for t in r[key]]
            a, b, r2 = fit(px, py)
            lines.append(f"- {label}: a = {a * 1e3:.1f} ms, b = {b * 1e6:.2f} µs/unit, r² = {r2:.4f}")
    return lines


def _profile_sections(extra: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for shape, p in extra.get("phases", {}).items():
        lines += [f"## Profile: shape \"{shape}\", N={extra['profile_n']}", "",
                  "Per phase of one `nsfs ls --json` (median of 3 child runs; the phase functions wrapped in timers;",
                  "indented phases are part of the one above):", "",
                  "| phase | s | share of command |", "|---|---|---|"]
        command = p["import"] + p["command"]
        lines.append(f"| imports (namespacefs.cli, discover) | {p['import']:.3f} | {p['import'] / command:.0%} |")
        lines += [f"| {k} | {v:.3f} | {v / command:.0%} |" for k, v in p.items() if k not in ("import", "command")]
        lines += [f"| **command total (in-process)** | {command:.3f} | |", ""]
    if "profile" in extra:
        lines += [f"pyinstrument of one `nsfs ls --json` (shape \"{extra['pyinstrument_shape']}\", "
                  f"N={extra['profile_n']}), top of the call tree:", "", "```", *extra["profile"], "```", ""]
    if "audit" in extra:
        lines += _audit_lines(extra["audit"], extra["audit_n"])
    if "imports" in extra:
        lines += ["## Imports of `nsfs ls`", "", "`python -X importtime`, top-level modules, cumulative:", "",
                  "| module | ms |", "|---|---|"]
        lines += [f"| {name} | {us / 1000:.1f} |" for us, name in extra["imports"][:12]]
        lines.append("")
    return lines


def _audit_lines(a: dict[str, Any], n: int) -> list[str]:
    lines = [f"## Reads per snapshot (shape \"sets\", N={n})", "",
             "`strace -f -y -e trace=openat,readlinkat` of one `nsfs ls --json`; /proc paths only, dirfd-relative",
             f"names resolved through `-y`. Calls: {a['calls']}; distinct (call, path): {a['distinct']}; "
             f"(call, path) pairs seen more than once: {a['repeated']}.", ""]
    if a["patterns"]:
        lines += ["Repeats by pattern (extra calls):", "", "| pattern | extra calls |", "|---|---|"]
        lines += [f"| `{k}` | {v} |" for k, v in sorted(a["patterns"].items(), key=lambda kv: -kv[1])]
        lines.append("")
    return lines


_CALL = re.compile(r'^(\d+)\s+(openat|readlinkat)\((-?\w+)(?:<([^>]*)>)?, "([^"]*)"')


def audit_counts(log: str) -> dict[str, Any]:
    """From an `strace -f -y -e trace=openat,readlinkat` log: the /proc paths opened or link-read
    more than once (per syscall), by pattern."""
    seen: collections.Counter[tuple[str, str]] = collections.Counter()
    for line in log.splitlines():
        m = _CALL.match(line)
        if not m or " = -1 " in line:
            continue
        call, dirfd, dirpath, name = m.group(2), m.group(3), m.group(4), m.group(5)
        path = name if name.startswith("/") or dirfd == "AT_FDCWD" else f"{dirpath}/{name}"
        if not path.startswith("/proc/"):
            continue  # interpreter start-up (modules, shared libraries) is not the snapshot
        seen[call, re.sub(r"/proc/self/", "/proc/self/", path)] += 1
    twice = {f"{call} {path}": k for (call, path), k in seen.items() if k > 1}
    patterns: collections.Counter[str] = collections.Counter()
    for key, k in twice.items():
        patterns[re.sub(r"/\d+", "/N", key)] += k - 1
    by_call = collections.Counter(call for call, _ in seen.elements())
    return {"calls": dict(by_call), "distinct": len(seen), "repeated": len(twice), "patterns": dict(patterns)}


def summarize_profile(text: str, depth: int = 50) -> list[str]:
    """The first lines of pyinstrument's text tree, without colour codes and the banner."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in text.splitlines()]
    body = [line for line in lines if line.strip() and not set(line.strip()) <= set("_ ")]
    return body[:depth]
