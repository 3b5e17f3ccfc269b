"""py-spy sampling of running services during a phase, summarised as top costs.

``py-spy record --nonblocking --gil --format raw`` is attached to each service's pid for the
length of the phase (stopped with SIGINT, which makes it write its file). The raw format
is one collapsed stack per line with its sample count; the summary gives, per service,
the share of samples whose innermost frame is in each function ("self") and each package,
and the share of samples that pass through each AI Spine function ("inclusive").
py-spy needs ptrace (root, or CAP_SYS_PTRACE). ``--gil`` keeps only samples of the thread
holding the GIL: without it, a service that is runnable but waiting for a core right after a
socket write (the machine is saturated) showed up as 40-50 % "busy" in
``_SelectorSocketTransport.write``, while its kernel time was under a tenth of its CPU.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IDLE_LEAVES = ("EpollSelector.select (selectors.py", "select (selectors.py")


@dataclass
class Recording:
    name: str
    pid: int
    path: Path
    process: subprocess.Popen[bytes]
    log: Path


class Profiler:
    def __init__(self, out_dir: Path, rate: int = 100) -> None:
        self.out_dir = out_dir
        self.rate = rate
        self.recordings: list[Recording] = []
        self.py_spy = str(Path(sys.executable).parent / "py-spy")

    def start(self, targets: dict[str, int]) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for name, pid in targets.items():
            path = self.out_dir / f"{name}.raw"
            log = self.out_dir / f"{name}.py-spy.log"
            with log.open("wb") as fh:
                process = subprocess.Popen(
                    [
                        self.py_spy,
                        "record",
                        "--pid",
                        str(pid),
                        "--rate",
                        str(self.rate),
                        "--nonblocking",
                        "--gil",
                        "--format",
                        "raw",
                        "-o",
                        str(path),
                    ],
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                )
            self.recordings.append(Recording(name, pid, path, process, log))

    def pids(self) -> dict[str, int]:
        return {f"py-spy:{r.name}": r.process.pid for r in self.recordings}

    def stop(self) -> dict[str, Any]:
        for rec in self.recordings:
            if rec.process.poll() is None:
                rec.process.send_signal(signal.SIGINT)
        summaries: dict[str, Any] = {}
        for rec in self.recordings:
            try:
                rec.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                rec.process.kill()
                rec.process.wait(timeout=5)
            if rec.path.exists():
                summaries[rec.name] = summarise(rec.path)
            else:
                summaries[rec.name] = {"error": rec.log.read_text(errors="replace")[-500:]}
        self.recordings.clear()
        return summaries


def _package(frame: str) -> str:
    _, _, where = frame.rpartition(" (")
    filename = where.rsplit(":", 1)[0]
    if filename.startswith("<frozen"):
        return filename.strip("<>").split()[-1]
    head = filename.split("/", 1)[0]
    return head.removesuffix(".py")


def _function(frame: str) -> str:
    """'Class.method (pkg/mod.py)' without the line number."""
    func, _, where = frame.rpartition(" (")
    return f"{func} ({where.rsplit(':', 1)[0]})"


def summarise(path: Path, top: int = 12) -> dict[str, Any]:
    stacks: list[tuple[list[str], int]] = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    total = sum(n for _, n in stacks)
    idle = sum(n for frames, n in stacks if frames[-1].startswith(IDLE_LEAVES))
    busy = total - idle
    self_fn: Counter[str] = Counter()
    self_pkg: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, n in stacks:
        if frames[-1].startswith(IDLE_LEAVES):
            continue
        self_fn[_function(frames[-1])] += n
        self_pkg[_package(frames[-1])] += n
        for fn in {_function(f) for f in frames if _package(f).startswith("spine_")}:
            inclusive[fn] += n

    def share(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(k, round(100 * v / busy, 1)) for k, v in counter.most_common(top)] if busy else []

    return {
        "samples": total,
        "busy_samples": busy,
        "self_by_package_pct": share(self_pkg),
        "self_by_function_pct": share(self_fn),
        "inclusive_spine_pct": share(inclusive),
    }
