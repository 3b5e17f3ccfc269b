"""Fixtures of the deployment tests (the helpers are in helpers.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from .helpers import K8S, OVERLAYS, kustomize_command, load_compose, load_module, run


@pytest.fixture(scope="session")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="session")
def kustomize() -> Callable[[Path], list[dict[str, Any]]]:
    command, _ = kustomize_command()

    def build(path: Path) -> list[dict[str, Any]]:
        result = run([*command, str(path)], timeout=300)
        if result.returncode != 0:
            pytest.fail(f"kustomize build {path} failed:\n{result.stderr}")
        return [d for d in yaml.safe_load_all(result.stdout) if d]

    return build


@pytest.fixture(scope="session")
def rendered(kustomize: Callable[[Path], list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """Every overlay rendered once, and the base."""
    out = {name: kustomize(K8S / "overlays" / name) for name in OVERLAYS}
    out["base"] = kustomize(K8S / "base")
    return out


@pytest.fixture(scope="session")
def topic_generator() -> ModuleType:
    return load_module(K8S / "generate.py", "spine_deploy_k8s_generate")
