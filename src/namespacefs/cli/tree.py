"""`nsfs tree`: the ownership tree (each user namespace with what it owns, nested user namespaces
inside), or with --pid the pid-namespace tree with the processes in each."""

from __future__ import annotations

import argparse

from namespacefs.cli.common import add_source_options, report_errors, take_snapshot
from namespacefs.cli.output import tree_rows
from namespacefs.model import Namespace, NsType, Process, Snapshot, by_type

Node = Namespace | Process


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--pid", action="store_true", help="the pid-namespace tree, with the processes in each")
    add_source_options(parser)


def run(args: argparse.Namespace) -> int:
    snap = take_snapshot(args)
    if args.pid:
        roots: list[Node] = [*sorted((ns for ns in snap.of_type("pid") if ns.parent not in snap.namespaces), key=by_type)]
        children = lambda node: _pid_children(snap, node)
    else:
        roots = [*sorted((ns for ns in snap if ns.owner not in snap.namespaces), key=by_type)]
        children = lambda node: _owned(snap, node)
    for prefix, node in tree_rows(roots, children):
        print(prefix + describe(node))
    report_errors(snap)
    return 0


def _owned(snap: Snapshot, node: Node) -> list[Node]:
    if isinstance(node, Namespace) and node.type == NsType.USER:
        owned: list[Node] = [*sorted(snap.owned_by(node.inode), key=lambda ns: (ns.type == NsType.USER, by_type(ns)))]
        return owned
    return []


def _pid_children(snap: Snapshot, node: Node) -> list[Node]:
    if not isinstance(node, Namespace):
        return []
    procs: list[Node] = [snap.processes[p] for p in node.processes if p in snap.processes]
    return procs + sorted(snap.children(node.inode), key=by_type)


def describe(node: Node) -> str:
    if isinstance(node, Process):
        inner = f" (pid {node.nspid[-1]} inside)" if len(node.nspid) > 1 else ""
        return f"{node.pid}{inner} {node.command}"
    label = f"{node.type}:[{node.inode}]"
    if node.name:
        label = f"{node.name} {label}"
    extra = f" {len(node.processes)} processes" if node.processes else f" held by {','.join(node.kinds)}"
    return label + extra
