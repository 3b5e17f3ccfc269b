"""`make up` restarts what is not really running (issue 18): a zombie and a reused pid pass
`kill -0`, so `scripts/procs.py` checks each process's state and start time; and the
readiness wait (`scripts/wait_up.py`) counts only the beats of the instance just started.

Real processes, no services: a child that exits under a parent that never reaps it is a real
zombie; this test's own process, recorded with another start time, is a reused pid.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import procs  # noqa: E402
import wait_up  # noqa: E402

#: a parent that starts a child which exits at once, prints the child's pid, and never
#: reaps it (it sleeps): the child stays a zombie for as long as the parent lives
ZOMBIE_PARENT = """
import os, sys, time
pid = os.fork()
if pid == 0:
    os._exit(0)
print(pid, flush=True)
time.sleep(120)
"""


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def zombie() -> Iterator[int]:
    parent = subprocess.Popen(
        [sys.executable, "-c", ZOMBIE_PARENT], stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    pid = int(parent.stdout.readline())
    deadline = time.monotonic() + 10
    while (state := procs.proc_state(pid)) is not None and state.state != "Z":
        assert time.monotonic() < deadline, "the child never became a zombie"
        time.sleep(0.01)
    yield pid
    parent.kill()
    parent.wait()


def test_a_process_started_and_recorded_is_running(run_dir: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        procs.record("svc", child.pid, "svc-host-1", run_dir)
        assert procs.running("svc", run_dir)
    finally:
        child.kill()
        child.wait()
    assert not procs.running("svc", run_dir)  # gone and reaped


def test_a_zombie_is_not_running_though_kill_0_succeeds(run_dir: Path, zombie: int) -> None:
    os.kill(zombie, 0)  # what the old check did: it succeeds on a zombie
    state = procs.proc_state(zombie)
    assert state is not None and state.state == "Z"
    identity = {"pid": zombie, "start_ticks": state.start_ticks, "instance_id": "orch-1"}
    procs.identity_file("orchestrator", run_dir).write_text(json.dumps(identity))
    assert not procs.running("orchestrator", run_dir)


def test_a_reused_pid_is_not_running(run_dir: Path) -> None:
    # this test's own process stands for a newcomer that got the recorded pid
    me = procs.proc_state(os.getpid())
    assert me is not None
    identity = {"pid": os.getpid(), "start_ticks": me.start_ticks - 1, "instance_id": "x"}
    procs.identity_file("gateway", run_dir).write_text(json.dumps(identity))
    os.kill(os.getpid(), 0)
    assert not procs.running("gateway", run_dir)
    assert not procs.running("never-started", run_dir)


def test_stack_sh_sees_a_zombie_as_stopped(zombie: int) -> None:
    """The real script, on a name of its own: status says stopped for a zombie's pid file."""
    run = ROOT / ".spine" / "run"
    run.mkdir(parents=True, exist_ok=True)
    name = "agent-echo-http"  # a name stack.sh knows; its files are put back afterwards
    files = (run / f"{name}.pid", run / f"{name}.identity")
    saved = {p: p.read_bytes() for p in files if p.exists()}
    try:
        state = procs.proc_state(zombie)
        assert state is not None
        (run / f"{name}.pid").write_text(f"{zombie}\n")
        procs.identity_file(name).write_text(
            f'{{"pid": {zombie}, "start_ticks": {state.start_ticks}, "instance_id": "z"}}\n'
        )
        out = subprocess.run(
            ["bash", str(ROOT / "scripts" / "stack.sh"), "status"],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        assert f"{name}: stopped" in out.stdout
    finally:
        for p in files:
            p.unlink(missing_ok=True)
        for p, data in saved.items():
            p.write_bytes(data)


def test_the_readiness_wait_ignores_beats_from_before_the_restart() -> None:
    status = {
        "services": [
            # the killed orchestrator's last beat is still fresh ("alive") in /status
            {"service": "orchestrator", "instance_id": "orchestrator-h-old", "alive": True},
            {"service": "auth", "instance_id": "auth-h-new", "alive": True},
            {"service": "registry", "instance_id": "registry-h-new", "alive": False},
        ]
    }
    wanted = {
        "orchestrator": "orchestrator-h-new",
        "auth": "auth-h-new",
        "registry": "registry-h-new",
    }
    assert wait_up.missing_services(status, wanted) == ["orchestrator", "registry"]
    status["services"].append(  # type: ignore[attr-defined]
        {"service": "orchestrator", "instance_id": "orchestrator-h-new", "alive": True}
    )
    assert wait_up.missing_services(status, wanted) == ["registry"]
    # a service whose instance was not recorded: any live instance counts
    assert wait_up.missing_services(status, {"auth": None}) == []


def test_the_instance_ids_come_from_what_stack_sh_recorded(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        procs.record("auth", child.pid, "auth-h-abc", run_dir)
        monkeypatch.setattr(procs, "RUN", run_dir)
        monkeypatch.setattr(
            wait_up, "read_identity", lambda name: procs.read_identity(name, run_dir)
        )
        assert wait_up.instances(["auth", "metrics"]) == {"auth": "auth-h-abc", "metrics": None}
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()


def test_stack_sh_expects_what_it_starts_on_the_bus() -> None:
    """The gateway's SPINE_EXPECTED_SERVICES under `make up` (docs/deploy.md, What /status
    expects): every installed process on the bus, services by name, agents as agent:<id>;
    echo-http, an HTTP agent registered after the wait, is not on it."""
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "stack.sh"), "expected"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    named = out.stdout.strip().split(",")
    assert len(named) == len(set(named))
    assert set(named) == {
        "gateway", "orchestrator", "registry", "auth", "metrics", "relay",
        "agent:echo", "agent:zoe", "agent:eddie",
    }  # fmt: skip


def test_stack_sh_runs_the_console_off_the_bus() -> None:
    """`make up` starts the console (DESIGN §13) after the gateway and `make down` stops it:
    `status` names it; it is on no /status list (an HTTP client, it beats on no topic)."""
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "stack.sh"), "status"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    names = [line.split(":")[0] for line in out.stdout.splitlines()]
    assert names[-2:] == ["gateway", "console"], names
    expected = subprocess.run(
        ["bash", str(ROOT / "scripts" / "stack.sh"), "expected"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert "console" not in expected.stdout
