"""Read the deployment files the way Docker and the collectors would, for the consistency tests.

Docker does not run here, so the tests read docker-compose.yml, the Dockerfile and the
collector/Jaeger configs, and hold them against the code: the real typer app, the settings
constants, the OTel SDK's environment variable names and Streamlit's config options.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
DEPLOY = ROOT / "deploy"
CALLSCOPE_IMAGE = "callscope:local"


def load_yaml(path: Path) -> Any:
    """A YAML file, anchors and merge keys resolved (as compose and the collector resolve them)."""
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@cache
def compose() -> dict[str, Any]:
    """docker-compose.yml as parsed YAML."""
    data = load_yaml(COMPOSE_FILE)
    assert isinstance(data, dict), "docker-compose.yml is not a mapping"
    return data


def services() -> dict[str, dict[str, Any]]:
    """The compose services by name."""
    return dict(compose()["services"])


def callscope_services() -> dict[str, dict[str, Any]]:
    """The services that run the callscope image (built from the repo's Dockerfile)."""
    return {
        name: service
        for name, service in services().items()
        if service.get("image") == CALLSCOPE_IMAGE or "build" in service
    }


def cli_services() -> dict[str, dict[str, Any]]:
    """The callscope services that run a `callscope` subcommand (the image's entrypoint, not overridden)."""
    return {name: service for name, service in callscope_services().items() if "entrypoint" not in service}


def command_args(service: dict[str, Any]) -> list[str]:
    """A service's `command` as an argument list (compose accepts a list or a shell-like string)."""
    command = service.get("command")
    if command is None:
        return []
    if isinstance(command, str):
        return shlex.split(command)
    return [str(arg) for arg in command]


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a dict (compose accepts a mapping or a list of NAME=value)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(key): "" if value is None else str(value) for key, value in env.items()}


_COMPOSE_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}")


def interpolate(value: str, shell: dict[str, str] | None = None) -> str:
    """A compose value with `${VAR}`, `${VAR:-default}` and `${VAR-default}` resolved against `shell`."""
    shell = shell or {}

    def resolve(match: re.Match[str]) -> str:
        name, operator, default = match.group(1), match.group(2), match.group(3) or ""
        if operator == ":-":
            return shell.get(name) or default
        if operator == "-":
            return shell.get(name, default)
        return shell.get(name, "")

    return _COMPOSE_VARIABLE.sub(resolve, value)


@dataclass(frozen=True)
class Mount:
    """One entry of a service's `volumes`."""

    source: str
    target: str
    read_only: bool

    @property
    def is_bind(self) -> bool:
        return self.source.startswith((".", "/"))


def mounts(service: dict[str, Any]) -> list[Mount]:
    """A service's volumes, short syntax (`src:dst[:ro]`) or long syntax."""
    result = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            result.append(Mount(str(volume["source"]), str(volume["target"]), bool(volume.get("read_only"))))
            continue
        parts = str(volume).split(":")
        result.append(Mount(parts[0], parts[1], len(parts) > 2 and "ro" in parts[2].split(",")))
    return result


@dataclass(frozen=True)
class PublishedPort:
    """A `ports` entry: the host port people open, and the container port it forwards to."""

    host: int
    container: int


def published_ports(service: dict[str, Any]) -> list[PublishedPort]:
    """A service's `ports`, short syntax (`[ip:]host:container[/proto]`) or long syntax."""
    result = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            result.append(PublishedPort(int(port["published"]), int(port["target"])))
            continue
        parts = str(port).split("/")[0].split(":")
        result.append(PublishedPort(int(parts[-2]), int(parts[-1])))
    return result


def exposed_ports(service: dict[str, Any]) -> set[int]:
    """Container ports other services may reach: `expose` plus the targets of `ports`."""
    exposed = {int(str(port).split("/")[0]) for port in service.get("expose") or []}
    return exposed | {port.container for port in published_ports(service)}


def host_port(endpoint: str, default_scheme: str = "http") -> tuple[str, int, str]:
    """(host, port, path) of an endpoint written as a URL or as a bare `host:port`."""
    url = endpoint if "://" in endpoint else f"{default_scheme}://{endpoint}"
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None, f"{endpoint!r} has no host:port"
    return parts.hostname, parts.port, parts.path


def listen_port(endpoint: str) -> int:
    """The port of a listen address such as `0.0.0.0:4317` or `:4317`."""
    return int(endpoint.rsplit(":", 1)[1])


def bind_mount_of(deploy_file: str) -> tuple[str, Mount]:
    """(service name, mount) of the bind mount whose source is `./deploy/<deploy_file>`."""
    found = [
        (name, mount)
        for name, service in services().items()
        for mount in mounts(service)
        if mount.is_bind and Path(mount.source).name == deploy_file
    ]
    assert len(found) == 1, f"deploy/{deploy_file} is mounted {len(found)} times, expected once"
    return found[0]


def pipeline_components(config: dict[str, Any]) -> dict[str, set[str]]:
    """Every receiver/processor/exporter/connector id referenced by a collector config's pipelines."""
    used: dict[str, set[str]] = {"receivers": set(), "processors": set(), "exporters": set()}
    for pipeline in (config.get("service") or {}).get("pipelines", {}).values():
        for kind, ids in used.items():
            ids.update(pipeline.get(kind) or [])
    return used


ENV_REFERENCE = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)(?::-[^}]*)?\}")


def env_references(text: str) -> set[str]:
    """Names of the `${env:NAME}` references in a collector config."""
    return set(ENV_REFERENCE.findall(text))


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, continuation lines joined."""

    keyword: str
    arguments: str


def dockerfile_instructions(text: str) -> list[Instruction]:
    """The Dockerfile's instructions in order (comments dropped, `\\` continuations joined)."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, arguments = line.partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments.strip()))
    return instructions
