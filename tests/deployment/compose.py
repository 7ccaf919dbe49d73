"""Reading docker-compose.yml and the Dockerfile the way Docker would, for tests on a machine without a Docker engine.

``interpolate`` applies Compose's ``${NAME:-default}`` substitution, so a test can run a service's exact command
line on this machine with its own environment.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

PROJECT_DIR = Path(__file__).resolve().parents[2]
COMPOSE_FILE = PROJECT_DIR / "docker-compose.yml"
DOCKERFILE = PROJECT_DIR / "Dockerfile"
ENTRYPOINT = PROJECT_DIR / "deploy" / "entrypoint.sh"

VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


def compose() -> dict[str, Any]:
    with open(COMPOSE_FILE) as file:
        return yaml.safe_load(file)


def service(name: str) -> dict[str, Any]:
    return compose()["services"][name]


def interpolate(value: str, environ: dict[str, str]) -> str:
    """``${NAME}`` and ``${NAME:-default}`` as Compose resolves them (an empty value takes the default)."""
    result = VARIABLE.sub(lambda match: environ.get(match["name"]) or (match["default"] or ""), value)
    if "${" in result:
        raise ValueError(f"unsupported interpolation in {value!r}")
    return result


def command(name: str, environ: dict[str, str]) -> list[str]:
    return [interpolate(part, environ) for part in service(name)["command"]]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    text = DOCKERFILE.read_text()
    logical = re.sub(r"\\\n", " ", text)
    instructions = []
    for line in logical.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, arguments = line.partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def image_environment() -> dict[str, str]:
    """The variables the Dockerfile's ``ENV`` instructions set (``NAME=value`` pairs, as it writes them)."""
    return dict(
        assignment.split("=", 1)
        for keyword, arguments in dockerfile_instructions()
        if keyword == "ENV"
        for assignment in arguments.split()
    )
