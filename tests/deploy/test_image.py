"""The Dockerfile, read rather than built (no container engine here): what an image reviewer checks."""

from __future__ import annotations

import fnmatch
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.deploy.charts import REPO_ROOT

DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


def dockerfile_instructions() -> list[Instruction]:
    """Instructions in order, continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        logical.append(pending)
        pending = ""
    keyword_and_rest = (line.strip().split(None, 1) for line in logical)
    return [Instruction(parts[0].upper(), parts[1] if len(parts) > 1 else "") for parts in keyword_and_rest]


def index_of(instructions: list[Instruction], keyword: str, pattern: str) -> int:
    for i, instruction in enumerate(instructions):
        if instruction.keyword == keyword and re.search(pattern, instruction.arguments):
            return i
    raise AssertionError(f"no {keyword} matching {pattern!r} in the Dockerfile")


def build_args(instructions: list[Instruction]) -> dict[str, str]:
    return dict(i.arguments.split("=", 1) for i in instructions if i.keyword == "ARG" and "=" in i.arguments)


def env_before(instructions: list[Instruction], position: int) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in instructions[:position]:
        if instruction.keyword == "ENV":
            env.update(token.split("=", 1) for token in shlex.split(instruction.arguments))
    return env


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return dockerfile_instructions()


def test_image_starts_from_python_311_slim(instructions: list[Instruction]) -> None:
    base = next(i.arguments for i in instructions if i.keyword == "FROM")
    resolved = re.sub(r"\$\{(\w+)\}", lambda m: build_args(instructions)[m.group(1)], base)
    assert resolved == "python:3.11-slim"


def test_torch_is_the_cpu_build_installed_before_everything_else(instructions: list[Instruction]) -> None:
    torch = index_of(instructions, "RUN", r"pip install .*torch==2\.13\.0")
    assert build_args(instructions)["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    assert re.search(r"--index-url \"?\$\{TORCH_INDEX_URL\}", instructions[torch].arguments)
    assert torch < index_of(instructions, "COPY", r"requirements\.lock")


def test_dependencies_are_installed_before_the_source_is_copied(instructions: list[Instruction]) -> None:
    # Editing code must not invalidate the layer that installs a few gigabytes of dependencies.
    lock_copied = index_of(instructions, "COPY", r"requirements\.lock")
    lock_installed = index_of(instructions, "RUN", r"pip install -r \S*requirements\.lock")
    source = re.compile(r"\b(libs|services|pyproject\.toml)\b")
    source_copies = [
        i
        for i, instruction in enumerate(instructions)
        if instruction.keyword == "COPY" and source.search(instruction.arguments)
    ]
    assert source_copies, "the Dockerfile never copies the source"
    assert lock_copied < lock_installed < min(source_copies)


def test_runs_as_a_non_root_user_with_production_settings(instructions: list[Instruction]) -> None:
    users = [i for i, instruction in enumerate(instructions) if instruction.keyword == "USER"]
    assert users, "the image runs as root"
    user = instructions[users[-1]].arguments.split(":")[0]
    assert user not in ("root", "0")
    # Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
    assert user.isdigit()
    assert not [i for i in instructions[users[-1] :] if i.keyword == "RUN" and "pip install" in i.arguments]
    env = env_before(instructions, len(instructions))
    assert env["ARBITER_ENV"] == "production"
    assert env["ARBITER_STATIC_ROOT"]
    assert instructions[-2:] == [Instruction("ENTRYPOINT", '["arbiter"]'), Instruction("CMD", '["serve"]')]


def test_static_files_are_collected_into_the_static_root_at_build_time(
    instructions: list[Instruction], tmp_path: Path
) -> None:
    # The same command with the same settings as the build step, so a settings change that breaks the image
    # build breaks here first.
    position = index_of(instructions, "RUN", r"arbiter collectstatic")
    command = shlex.split(instructions[position].arguments.split("&&")[0])
    inline = {}
    while "=" in command[0]:
        name, value = command.pop(0).split("=", 1)
        inline[name] = value
    assert command[:2] == ["arbiter", "collectstatic"]
    env = {**env_before(instructions, position), **inline}
    env.update(
        PATH="/usr/bin:/bin",
        HOME=str(tmp_path),
        ARBITER_HOME=str(tmp_path / "home"),
        ARBITER_STATIC_ROOT=str(tmp_path / "static"),
    )
    result = subprocess.run(
        [sys.executable, "-m", "arbiter.cli", *command[1:]],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "static" / "console" / "arbiter.css").is_file()
    assert (tmp_path / "static" / "rest_framework").is_dir()


def test_dockerignore_keeps_local_state_out_and_the_build_inputs_in(instructions: list[Instruction]) -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:
        return any(fnmatch.fnmatch(path, p) or path.startswith(p.rstrip("/") + "/") for p in patterns)

    for local in (".venv", ".git", ".arbiter", ".venv/bin/python", "tests/deploy/test_image.py"):
        assert ignored(local), local
    copied = [
        token
        for i in instructions
        if i.keyword == "COPY"
        for token in i.arguments.split()[:-1]
        if not token.startswith("--")
    ]
    assert copied
    for source in copied:
        assert not ignored(source), f"{source} is copied but .dockerignore drops it"


def test_every_file_the_code_ships_is_installed_into_the_image() -> None:
    # The image installs the project as a wheel: a file that pyproject's package-data does not name is missing
    # there while the editable install used by the tests still finds it.
    setuptools = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = setuptools["package-data"]["*"]
    missing = [
        str(path.relative_to(REPO_ROOT))
        for root in (REPO_ROOT / "libs" / "arbiter", REPO_ROOT / "services")
        for path in root.rglob("*")
        if path.is_file()
        and path.suffix not in (".py", ".pyc")
        and "__pycache__" not in path.parts
        and not any(fnmatch.fnmatch(path.name, pattern) for pattern in patterns)
    ]
    assert not missing, f"not in pyproject's [tool.setuptools.package-data], so not in the image: {missing}"
