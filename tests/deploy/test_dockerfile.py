"""The Dockerfile and .dockerignore, read as text: no engine is needed (or here) to build.

What a build would tell first is checked here: every file the Dockerfile copies is in the
build context, every workspace member's metadata reaches the dependency layer, the runtime
stage is small and non-root, and the image has the commands compose and Kubernetes run.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .helpers import K8S, PROCESSES, ROOT, workspace_members, workspace_scripts

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARGs and stages, with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for raw in joined.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), parts[0])
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        elif keyword == "ARG" and not stages:
            key, _, value = rest.partition("=")
            args[key.strip()] = value.strip()
        elif stages:
            stages[-1].instructions.append((keyword, rest.strip()))
    return args, stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())[1]


def _copies(stage: Stage) -> list[tuple[list[str], str, dict[str, str]]]:
    out = []
    for keyword, rest in stage.instructions:
        if keyword == "COPY":
            words = shlex.split(rest)
            flags = dict(w[2:].split("=", 1) for w in words if w.startswith("--"))
            paths = [w for w in words if not w.startswith("--")]
            out.append((paths[:-1], paths[-1], flags))
    return out


def _pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern: ``**`` spans directories, ``*`` and ``?`` do not."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        else:
            char = pattern[i]
            out += {"*": "[^/]*", "?": "[^/]"}.get(char, re.escape(char))
            i += 1
    return re.compile(out)


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a match on a parent counts."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _pattern(pattern.lstrip("!").rstrip("/"))
        if any(regex.fullmatch(c) for c in candidates):
            ignored = not negate
    return ignored


def _dockerignore() -> list[str]:
    return [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


def test_multi_stage_on_python_slim(stages: list[Stage]) -> None:
    assert len(stages) >= 2
    for stage in stages:
        assert stage.base.startswith("python:3.11-slim"), stage.base
    assert stages[-1].base == stages[0].base  # the venv's interpreter path is the same


def test_build_stage_installs_the_lock_with_uv(stages: list[Stage]) -> None:
    build = stages[0]
    runs = " ".join(rest for kw, rest in build.instructions if kw == "RUN")
    assert re.search(r"uv sync --frozen --no-dev --all-packages\b", runs)
    assert "--no-editable" in runs  # the runtime stage needs no source tree
    version = re.search(r'UV_VERSION="([^"]+)"', (ROOT / "scripts/bootstrap.sh").read_text())
    assert version is not None
    args = [rest for kw, rest in build.instructions if kw == "ARG"]
    assert f"UV_VERSION={version.group(1)}" in args, "the same uv as scripts/bootstrap.sh"
    env = " ".join(rest for kw, rest in build.instructions if kw == "ENV")
    assert "UV_PROJECT_ENVIRONMENT=/app/.venv" in env


def test_every_workspace_member_reaches_the_dependency_layer(stages: list[Stage]) -> None:
    copied = {src for sources, _dest, _ in _copies(stages[0]) for src in sources}
    for member in workspace_members():
        assert f"{member}/pyproject.toml" in copied, f"Dockerfile misses {member}/pyproject.toml"
    assert {"pyproject.toml", "uv.lock"} <= copied


def test_runtime_stage_is_small_and_non_root(stages: list[Stage]) -> None:
    runtime = stages[-1]
    users = [rest for kw, rest in runtime.instructions if kw == "USER"]
    assert users, "the runtime stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in ("0", "root")
    assert user.isdigit(), "a numeric uid lets Kubernetes verify runAsNonRoot"
    runs = " ".join(rest for kw, rest in runtime.instructions if kw == "RUN")
    for tool in ("pip install", "uv ", "apt-get install", "gcc", "build-essential"):
        assert tool not in runs, f"runtime stage runs {tool!r}"
    for sources, dest, flags in _copies(runtime):
        if "from" in flags:
            assert sources == ["/app/.venv"] and dest == "/app/.venv", "only the venv crosses"
    cmd = [rest for kw, rest in runtime.instructions if kw == "CMD"]
    entry = [rest for kw, rest in runtime.instructions if kw == "ENTRYPOINT"]
    assert cmd and not entry, "`docker run image <command>` must replace the command"


def test_security_context_matches_the_image_user(stages: list[Stage]) -> None:
    user = [rest for kw, rest in stages[-1].instructions if kw == "USER"][-1]
    uid, _, gid = user.partition(":")
    patch = (K8S / "base" / "pod-defaults.yaml").read_text()
    assert f"runAsUser: {uid}" in patch and f"runAsGroup: {gid or uid}" in patch


def test_build_context_holds_what_is_copied_and_no_secrets(stages: list[Stage]) -> None:
    patterns = _dockerignore()
    for stage in stages:
        for sources, _dest, flags in _copies(stage):
            if "from" in flags:
                continue
            for source in sources:
                assert (ROOT / source).exists(), source
                assert not _ignored(source, patterns), f".dockerignore drops {source}"
    for secret in (".env", ".git", ".venv", ".spine", "libs/contracts/.venv", "tests", "bench"):
        assert _ignored(secret, patterns), f"{secret} would reach the build context"
    assert _ignored(
        "libs/servicekit/src/spine_servicekit/__pycache__/kafka.cpython-311.pyc", patterns
    )
    assert not _ignored("libs/servicekit/src/spine_servicekit/kafka.py", patterns)


def test_image_has_every_command_the_deployments_run(stages: list[Stage]) -> None:
    scripts = workspace_scripts()
    assert {p.script for p in PROCESSES} <= set(scripts)
    installed = {dest for _src, dest, _flags in _copies(stages[-1])}
    assert "/usr/local/bin/spine-kafka-connected" in installed
    probe = [
        src
        for srcs, dest, _ in _copies(stages[-1])
        for src in srcs
        if dest == "/usr/local/bin/spine-kafka-connected"
    ]
    assert probe and Path(ROOT / probe[0]).read_text().startswith("#!/usr/bin/env python3")


@pytest.mark.slow
def test_build_stage_replayed_without_docker(stages: list[Stage], tmp_path: Path) -> None:
    """The build stage's own COPY and `uv sync` lines, run here into a scratch context.

    Proves what a `docker build` would prove first: the lock installs with only the files
    the Dockerfile copies (after .dockerignore), without dev dependencies, and the virtualenv
    runs every command once the sources are gone (--no-editable).
    """
    build = stages[0]
    patterns = _dockerignore()
    context = tmp_path / "src"
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "VIRTUAL_ENV"))}
    synced = 0
    for keyword, rest in build.instructions:
        if keyword == "ENV":
            env.update(dict(word.split("=", 1) for word in shlex.split(rest)))
        elif keyword == "COPY":
            words = [w for w in shlex.split(rest) if not w.startswith("--")]
            dest = words[-1]
            for source in words[:-1]:
                # Docker: a file copied to "dir/" keeps its name; a directory's content lands
                # in the destination itself
                target = context / dest
                if dest.endswith("/") and (ROOT / source).is_file():
                    target = target / Path(source).name
                _copy_context(ROOT / source, target, patterns)
        elif keyword == "RUN" and "uv sync" in rest:
            command = shlex.split(rest[rest.index("uv sync") :])
            env.update(UV_PROJECT_ENVIRONMENT=str(venv), UV_PYTHON=sys.executable)
            result = subprocess.run(
                command, cwd=context, env=env, capture_output=True, text=True, timeout=600
            )
            assert result.returncode == 0, f"{' '.join(command)}:\n{result.stderr[-3000:]}"
            synced += 1
    assert synced == 2
    shutil.rmtree(context)  # the runtime stage gets the virtualenv only
    for process in PROCESSES:
        assert (venv / "bin" / process.script).exists(), process.script
    modules = [
        "spine_gateway.app",
        "spine_orchestrator.app",
        "spine_registry.relay.app",
        "spine_auth.app",
        "spine_metrics.app",
        "spine_demo_agents.echo_http",
    ]
    check = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            f"import {', '.join(modules)}; import importlib.util as u; "
            "assert u.find_spec('pytest') is None, 'dev dependencies in the image'",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert check.returncode == 0, check.stderr[-3000:]


def _copy_context(source: Path, dest: Path, patterns: list[str]) -> None:
    """Copy what a build context would hold of ``source`` (.dockerignore applied)."""
    if source.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, dest)
        return
    for path in source.rglob("*"):
        relative = str(path.relative_to(ROOT))
        if path.is_file() and not _ignored(relative, patterns):
            target = dest / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
