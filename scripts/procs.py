"""Is a process `make up` started still really running? (`scripts/stack.sh`, `wait_up.py`)

`kill -0 <pid>` is not enough: a killed process whose parent has gone stays a zombie until
init reaps it (and `kill -0` succeeds on a zombie), and a pid is reused by an unrelated
process after a while. So `stack.sh` records each process's identity when it starts it —
its pid, its start time in clock ticks since boot (`/proc/<pid>/stat` field 22, fixed for the
life of a process) and the instance id it gave it — in `.spine/run/<name>.identity`, and a
process counts as running only when the pid exists, is not a zombie (state Z) or dead (X),
and has the start time recorded. Stdlib only: it runs before the workspace exists.

    python3 scripts/procs.py record <name> <pid> <instance_id>   write the identity file
    python3 scripts/procs.py alive <name>                         exit 0 if really running
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

RUN = Path(__file__).resolve().parent.parent / ".spine" / "run"


@dataclass(frozen=True)
class ProcState:
    """What `/proc/<pid>/stat` says of a process."""

    state: str  # R, S, D, Z (zombie), X (dead)...
    start_ticks: int


def proc_state(pid: int) -> ProcState | None:
    """The process's state and start time, or None when there is no such pid."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # the command name (field 2) may hold spaces and ')': the fields start after the last ')'
    fields = raw[raw.rindex(")") + 2 :].split()
    return ProcState(state=fields[0], start_ticks=int(fields[19]))


def identity_file(name: str, run: Path = RUN) -> Path:
    return run / f"{name}.identity"


def record(name: str, pid: int, instance_id: str, run: Path = RUN) -> dict[str, object]:
    """Write what identifies the process ``stack.sh`` just started as ``name``."""
    found = proc_state(pid)
    if found is None:
        raise SystemExit(f"procs: no process {pid} to record for {name}")
    identity = {"pid": pid, "start_ticks": found.start_ticks, "instance_id": instance_id}
    path = identity_file(name, run)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(identity) + "\n")
    tmp.replace(path)
    return identity


def read_identity(name: str, run: Path = RUN) -> dict[str, object] | None:
    try:
        found = json.loads(identity_file(name, run).read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def running(name: str, run: Path = RUN) -> bool:
    """True only for the very process recorded for ``name``, alive and not a zombie."""
    identity = read_identity(name, run)
    if identity is None:
        return False
    pid, ticks = identity.get("pid"), identity.get("start_ticks")
    if not isinstance(pid, int) or not isinstance(ticks, int):
        return False
    found = proc_state(pid)
    return found is not None and found.state not in ("Z", "X") and found.start_ticks == ticks


def main(argv: list[str]) -> int:
    if len(argv) == 4 and argv[0] == "record":
        record(argv[1], int(argv[2]), argv[3])
        return 0
    if len(argv) == 2 and argv[0] == "alive":
        return 0 if running(argv[1]) else 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
