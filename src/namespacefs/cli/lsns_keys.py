"""The keys util-linux lsns -J gives a namespace, added to each namespace object of `nsfs ls -J`
(README, the JSON contract): the cells of lsns's columns, typed as lsns types them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from namespacefs.cli.ls import BY_NAME, NamespaceRow, _netnsid, _nsfs, _relative
from namespacefs.cli.output import json_cell
from namespacefs.kinds import HolderKind

if TYPE_CHECKING:
    from namespacefs.model import Holder

#: The keys of lsns -J (util-linux 2.42 sys-utils/lsns.c, all its columns but PATH, whose key the
#: JSON contract already gives the name path), in its order
LSNS_KEYS = ("NS", "NPROCS", "PID", "PPID", "COMMAND", "USER", "UID", "NETNSID", "NSFS", "PNS", "ONS")
#: The columns whose value is that of the row's process alone, where the row has one
OF_PROCESS = frozenset({"PID", "PPID", "COMMAND", "UID", "USER"})


class LsnsKeys:
    """lsns's keys of one row's namespace: each LSNS_KEYS column's json_cell(), worked out for
    thousands of namespaces with little more than a dict each. The cells that are the row's
    process's alone (OF_PROCESS) are made once per process (a process is in several namespaces:
    five of its own on a sandbox-dense host); of the rest, NS, NPROCS, PNS and ONS are numbers,
    whose cell is the number, and NETNSID's is its text. A test holds this to the columns."""

    __slots__ = ("_columns", "_nowrap", "_nsfs", "_of_pid")

    def __init__(self, nowrap: bool) -> None:
        self._nowrap = nowrap
        self._columns = [(BY_NAME[name].key, BY_NAME[name]) for name in LSNS_KEYS]
        self._nsfs = BY_NAME["NSFS"]
        self._of_pid: dict[int, dict[str, object]] = {}  # pid -> its cells of the OF_PROCESS columns

    def add(self, item: dict[str, object], row: NamespaceRow) -> None:
        """Add lsns's keys, in their order, to the contract's object of row's namespace."""
        proc = row.process
        if proc is None:  # (no process shows it: held by a bind mount, an fd, as owner or parent)
            item.update(self.generic(row))
            return
        mine = self._of_pid.get(proc.pid)
        if mine is None:
            mine = self._of_pid[proc.pid] = {key: json_cell(c, c.value(row), self._nowrap)
                                             for key, c in self._columns if c.name in OF_PROCESS}
        ns = row.ns
        item["ns"] = ns.inode
        item["nprocs"] = len(ns.processes)
        item.update(mine)
        item["netnsid"] = _netnsid(row)
        item["nsfs"] = json_cell(self._nsfs, _nsfs(row), self._nowrap) if _mounted(ns.holders) else None
        item["pns"] = _relative(ns.parent)
        item["ons"] = _relative(ns.owner)

    def generic(self, row: NamespaceRow) -> dict[str, object]:
        """The same, column by column."""
        return {key: json_cell(c, c.value(row), self._nowrap) for key, c in self._columns}


_BINDMOUNT = HolderKind.BINDMOUNT  # (an enum member's lookup is slow: made once)


def _mounted(holders: tuple[Holder, ...]) -> bool:
    """A bind mount among the holders (NSFS has a cell)."""
    return any(h.kind == _BINDMOUNT for h in holders)
