"""``make rebuild`` finds the services through their ``ai_spine.projections`` entry points:
servicekit names no service, and listing the targets imports none."""

from __future__ import annotations

import subprocess
import sys

import pytest
from spine_servicekit.rebuild import TARGETS, RebuildError, ServiceProjections, Target


def test_listing_the_targets_imports_no_service() -> None:
    code = (
        "import sys\n"
        "from spine_servicekit.rebuild import TARGETS\n"
        "print(' '.join(TARGETS))\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'spine_auth', 'spine_gateway', 'spine_orchestrator', 'spine_registry'})))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    names, imported = done.stdout.split("\n")[:2]
    assert {"auth", "orchestrator", "registry"} <= set(names.split())
    assert imported == ""


@pytest.mark.parametrize(
    ("name", "env", "default", "projections"),
    [
        ("orchestrator", "SPINE_ORCHESTRATOR_SCHEMA", "orchestrator", {"executions"}),
        ("registry", "SPINE_REGISTRY_SCHEMA", "registry", {"agents"}),
        ("auth", "SPINE_AUTH_SCHEMA", "auth", {"auth"}),
    ],
)
def test_a_service_registers_its_projections_and_schema_setting(
    monkeypatch: pytest.MonkeyPatch, name: str, env: str, default: str, projections: set[str]
) -> None:
    target = TARGETS[name]
    monkeypatch.delenv(env, raising=False)
    assert target.schema() == default
    monkeypatch.setenv(env, f"{default}_x")
    assert target.schema() == f"{default}_x"
    assert {p.name for p in target.load_projections()} == projections


def test_an_entry_point_that_is_not_a_registration_is_refused() -> None:
    from importlib.metadata import EntryPoint

    bogus = Target("bogus", EntryPoint("bogus", "spine_servicekit.rebuild:TARGETS", "x"))
    with pytest.raises(RebuildError, match="not a ServiceProjections"):
        bogus.load_projections()
    assert ServiceProjections.__dataclass_fields__["schema_field"].default == "db_schema"
