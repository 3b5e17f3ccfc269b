"""Per-process CPU seconds and memory, read from /proc (Linux only).

A *unit* is one process of interest (a service, the broker, PostgreSQL, Redis, the Celery
worker, the bench itself) together with its live descendants: PostgreSQL and Celery work in
child processes. CPU of a unit = utime+stime of every live process of the tree, plus
cutime+cstime (children already reaped) of each, so a backend that exits between two
snapshots is still counted.
"""

from __future__ import annotations

import os
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024

SERVICES = (
    "gateway",
    "auth",
    "orchestrator",
    "registry",
    "metrics",
    "relay",
    "agent-echo",
    "agent-echo-http",
    "agent-zoe",
    "agent-eddie",
)
INFRA = ("kafka", "postgres", "redis")


def _stat(pid: int, reaped: bool = True) -> tuple[int, float, float] | None:
    """(ppid, cpu seconds, of which in the kernel) of one process (with its reaped children
    unless ``reaped`` is false), or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name may contain spaces and parentheses: split after the last ')'
    fields = raw[raw.rindex(")") + 2 :].split()
    ppid = int(fields[1])
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    if not reaped:
        cutime = cstime = 0
    return ppid, (utime + stime + cutime + cstime) / CLK_TCK, (stime + cstime) / CLK_TCK


def _status_kb(pid: int, *names: str) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in names:
                out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = defaultdict(list)
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st is not None:
                children[st[0]].append(int(entry.name))
    return children


def _tree(root: int, children: dict[int, list[int]]) -> list[int]:
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def read_pid(run_dir: Path, name: str) -> int | None:
    try:
        pid = int((run_dir / f"{name}.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if alive(pid) else None


@dataclass
class Unit:
    name: str
    pid: int
    tree: bool = True  # count descendants (live and reaped) too


@dataclass
class ProcessWatch:
    """CPU snapshots on demand and a background sampler of resident memory."""

    units: dict[str, Unit] = field(default_factory=dict)
    interval_s: float = 0.25
    rss_peak_kb: dict[str, int] = field(default_factory=dict)  # main process, sampled
    tree_rss_peak_kb: dict[str, int] = field(default_factory=dict)  # whole tree, sampled
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, name: str, pid: int, *, tree: bool = True) -> None:
        with self._lock:
            self.units[name] = Unit(name, pid, tree)

    def remove(self, name: str) -> None:
        with self._lock:
            self.units.pop(name, None)

    def cpu(self, kernel_only: bool = False) -> dict[str, float]:
        """CPU seconds used so far by each unit (a unit that is gone reads as absent);
        with ``kernel_only``, the part spent in the kernel (system time)."""
        children = _children_map()
        out: dict[str, float] = {}
        with self._lock:
            units = list(self.units.values())
        for unit in units:
            pids = _tree(unit.pid, children) if unit.tree else [unit.pid]
            total, seen = 0.0, False
            for pid in pids:
                st = _stat(pid, reaped=unit.tree)
                if st is not None:
                    total += st[2] if kernel_only else st[1]
                    seen = True
            if seen:
                out[unit.name] = total
        return out

    def hwm_mb(self) -> dict[str, float]:
        """VmHWM of each unit's main process: its peak RSS since it started."""
        out = {}
        with self._lock:
            units = list(self.units.values())
        for unit in units:
            kb = _status_kb(unit.pid, "VmHWM").get("VmHWM")
            if kb is not None:
                out[unit.name] = round(kb / 1024, 1)
        return out

    def _sample(self) -> None:
        children = _children_map()
        with self._lock:
            units = list(self.units.values())
        for unit in units:
            main = _status_kb(unit.pid, "VmRSS").get("VmRSS")
            if main is None:
                continue
            self.rss_peak_kb[unit.name] = max(self.rss_peak_kb.get(unit.name, 0), main)
            if unit.tree:
                total = main
                for pid in _tree(unit.pid, children)[1:]:
                    total += _status_kb(pid, "VmRSS").get("VmRSS", 0)
                self.tree_rss_peak_kb[unit.name] = max(
                    self.tree_rss_peak_kb.get(unit.name, 0), total
                )

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def start(self) -> None:
        self._sample()
        self._thread = threading.Thread(target=self._run, name="procwatch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def memory_report(self) -> dict[str, dict[str, float]]:
        hwm = self.hwm_mb()
        out: dict[str, dict[str, float]] = {}
        for name in self.units:
            row: dict[str, float] = {}
            if name in self.rss_peak_kb:
                row["rss_peak_mb"] = round(self.rss_peak_kb[name] / 1024, 1)
            tree = self.tree_rss_peak_kb.get(name)
            if tree is not None and tree != self.rss_peak_kb.get(name):
                row["tree_rss_peak_mb"] = round(tree / 1024, 1)
            if name in hwm:
                row["vmhwm_mb"] = hwm[name]
            out[name] = row
        return out


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: round(after[k] - before.get(k, 0.0), 2) for k in after if k in before}
