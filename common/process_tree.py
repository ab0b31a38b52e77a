"""Which process started which, read from Linux's /proc (empty where there is none)."""

from __future__ import annotations

from pathlib import Path


def children_by_parent(proc: Path = Path("/proc")) -> dict[int, list[int]]:
    """Every live process's children, keyed by the parent's pid."""
    children: dict[int, list[int]] = {}
    for stat in proc.glob("[0-9]*/stat"):
        try:  # "pid (name) state ppid ...": the name may hold spaces and parentheses
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError):
            continue  # ended while we looked
        children.setdefault(parent, []).append(int(stat.parent.name))
    return children


def descendants(root: int) -> list[int]:
    """``root`` and every process below it."""
    children = children_by_parent()
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found
