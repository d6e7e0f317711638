"""Read the Dockerfile the way a builder does: global ARG defaults, stages, their instructions."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

from tests.deploy.conftest import ROOT

DOCKERFILE = ROOT / "Dockerfile"


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def index(self, keyword: str, contains: str = "") -> list[int]:
        """Positions of the instructions with this keyword (and text), in file order."""
        return [
            i
            for i, (kw, args) in enumerate(self.instructions)
            if kw == keyword and contains in args
        ]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, instructions with their continuation lines joined."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base=parts[0], name=name))
        elif stages:
            stages[-1].instructions.append((keyword, rest.strip()))
        elif keyword == "ARG" and "=" in rest:
            key, _, value = rest.strip().partition("=")
            args[key] = value
    return args, stages


def env_of(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in stage.all("ENV"):
        for token in shlex.split(args):
            key, _, value = token.partition("=")
            env[key] = value
    return env


def expand(text: str, args: dict[str, str]) -> str:
    """`${NAME}` replaced by the build argument's default (what FROM lines see)."""
    return re.sub(r"\$\{(\w+)\}", lambda match: args[match.group(1)], text)


def uv_sync_argv(run: str) -> list[str]:
    """The `uv sync ...` command of a RUN instruction, without the shell commands chained to it."""
    tokens = shlex.split(run[run.index("uv sync") :])
    return tokens[: tokens.index("&&")] if "&&" in tokens else tokens
