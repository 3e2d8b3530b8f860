"""What the daemon serves, made once per model change: the snapshot's JSON (assembled from
per-object pieces, so a partial update serializes only what changed) and derived values
(containers, accounting, hostnames, ...), each computed once per snapshot on first use."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

from namespacefs.kernel import NS_TYPES
from namespacefs.model import Namespace, Process, Snapshot

_ORDER = {t: i for i, t in enumerate(NS_TYPES)}


class Served:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._snap: Snapshot | None = None
        self._json: tuple[bytes, bytes] | None = None  # the JSON before and after the value of taken_at
        self._pieces: dict[int, tuple[object, str]] = {}  # id(namespace or process) -> (it, its JSON)
        self._derived: dict[str, tuple[Snapshot, Any]] = {}
        self._answers: tuple[Snapshot | None, dict[object, bytes]] = (None, {})

    def snapshot_json(self, snap: Snapshot, taken_at: float | None = None) -> bytes:
        """Snapshot.to_dict() as JSON: namespaces and processes are immutable and a partial update
        keeps the unchanged ones, so only what changed is serialized again. `taken_at`, if given,
        replaces the snapshot's own (a live model is current up to the last event it applied)."""
        with self._lock:
            if self._snap is not snap or self._json is None:
                text = self._assemble(snap)
                marker = b'"taken_at":' + json.dumps(snap.taken_at).encode()
                before, _, after = text.partition(marker)
                self._json, self._snap = (before + b'"taken_at":', after), snap
            before, after = self._json
        value = snap.taken_at if taken_at is None else taken_at
        return before + json.dumps(value).encode() + after

    def _assemble(self, snap: Snapshot) -> bytes:
        cache: dict[int, tuple[object, str]] = {}

        def piece(obj: Namespace | Process) -> str:
            hit = self._pieces.get(id(obj))
            text = hit[1] if hit is not None and hit[0] is obj else json.dumps(obj.to_dict(), separators=(",", ":"))
            cache[id(obj)] = (obj, text)
            return text

        head = snap.replace(namespaces={}, processes={}).to_dict()
        head["namespaces"] = head["processes"] = None
        namespaces = ",".join(piece(ns) for ns in sorted(snap.namespaces.values(), key=lambda n: (_ORDER[n.type], n.inode)))
        processes = ",".join(piece(p) for _pid, p in sorted(snap.processes.items()))
        text = json.dumps(head, separators=(",", ":"))
        text = text.replace('"namespaces":null', f'"namespaces":[{namespaces}]', 1)
        text = text.replace('"processes":null', f'"processes":[{processes}]', 1)
        self._pieces = cache
        return text.encode()

    def derived(self, snap: Snapshot, what: str, compute: Callable[[Snapshot], Any]) -> Any:
        """compute(snap), made once per snapshot (containers, overlaps, ...)."""
        cached = self._derived.get(what)
        if cached is not None and cached[0] is snap:
            return cached[1]
        value = compute(snap)
        self._derived[what] = (snap, value)
        return value

    def answer(self, snap: Snapshot, key: object, make: Callable[[], bytes]) -> bytes:
        """make(): an answer about `snap` (one namespace's details), made once per snapshot and key
        (ANSWERS of them at most: a client that walks every namespace does not keep them all)."""
        with self._lock:
            held, answers = self._answers
            if held is not snap:
                answers = {}
                self._answers = (snap, answers)
            hit = answers.get(key)
        if hit is None:
            hit = make()
            with self._lock:
                if len(answers) >= ANSWERS:
                    answers.clear()
                answers[key] = hit
        return hit


#: Answers about one snapshot kept at most (Served.answer).
ANSWERS = 256
