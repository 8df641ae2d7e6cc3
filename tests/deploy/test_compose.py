"""docker-compose.yml, the Dockerfile and the collector/Jaeger configs agree with the code.

Docker cannot run here, so each test reads the files and holds them against what the code
really accepts: commands are parsed by the real typer app, environment variables must be ones
some code reads, and every endpoint must land on a port that some service really listens on.
"""

from __future__ import annotations

import ast
import json
import re
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import typer

from callscope.cli import app
from pipeline import settings as settings_module
from pipeline.schema import CALL_ID_ATTRIBUTE
from tests.deploy.deployment import (
    CALLSCOPE_IMAGE,
    DEPLOY,
    DOCKERFILE,
    DOCKERIGNORE,
    ROOT,
    Instruction,
    bind_mount_of,
    callscope_services,
    cli_services,
    command_args,
    compose,
    dockerfile_instructions,
    env_references,
    environment,
    exposed_ports,
    host_port,
    interpolate,
    listen_port,
    load_yaml,
    mounts,
    pipeline_components,
    published_ports,
    services,
)

CLI = typer.main.get_command(app)
COLLECTOR_CONFIGS = sorted(DEPLOY.glob("otel-collector*.yaml"))


def parsed_command(service_name: str) -> tuple[str, dict[str, Any]]:
    """(subcommand, parsed parameters) of a callscope service, parsed by the real CLI."""
    args = command_args(services()[service_name])
    assert args, f"service {service_name} has no command"
    name, rest = args[0], args[1:]
    commands = CLI.commands  # type: ignore[attr-defined]
    assert name in commands, f"service {service_name}: `callscope {name}` is not a command"
    try:
        ctx = commands[name].make_context(name, list(rest))
    except Exception as exc:  # the CLI's own usage error, whatever its class
        pytest.fail(f"service {service_name}: `callscope {' '.join(args)}` is rejected: {exc}")
    return name, dict(ctx.params)


def collector_config() -> dict[str, Any]:
    return load_yaml(DEPLOY / "otel-collector.yaml")


def jaeger_config() -> dict[str, Any]:
    return load_yaml(DEPLOY / "jaeger.yaml")


# --- services and commands ---------------------------------------------------------------


def test_the_deployment_has_every_service_the_issue_asks_for() -> None:
    all_services = services()
    for name in ("jaeger", "otel-collector", "ingest", "build", "dashboard"):
        assert name in all_services, f"docker-compose.yml has no `{name}` service"
        assert "profiles" not in all_services[name], f"{name} must start without a profile"
    assert all_services["jaeger"]["image"].startswith("jaegertracing/jaeger:2.")
    assert all_services["otel-collector"]["image"].startswith("otel/opentelemetry-collector-contrib:")
    demo = [service for service in all_services.values() if "demo" in (service.get("profiles") or [])]
    assert demo, "the demo profile (demo app and simulator) is missing"
    # The demo app and the simulator run from the callscope image (tests/deploy/test_demo_traffic.py).
    assert all(service.get("image") == CALLSCOPE_IMAGE for service in demo)


@pytest.mark.parametrize("service_name", sorted(callscope_services()))
def test_every_callscope_service_builds_the_repo_image(service_name: str) -> None:
    service = services()[service_name]
    assert service.get("image") == CALLSCOPE_IMAGE
    assert service.get("build") in (".", {"context": "."}), "callscope services build the repo's Dockerfile"


@pytest.mark.parametrize("service_name", sorted(cli_services()))
def test_every_callscope_service_runs_a_real_command_with_real_options(service_name: str) -> None:
    parsed_command(service_name)


def test_the_long_running_services_are_ingest_build_follow_and_dashboard() -> None:
    assert parsed_command("ingest")[0] == "ingest"
    name, params = parsed_command("build")
    assert name == "build"
    assert params.get("follow") is True, "the build service must run `build --follow`"
    assert parsed_command("dashboard")[0] == "dashboard"


def test_depends_on_names_defined_services() -> None:
    all_services = services()
    for name, service in all_services.items():
        for dependency in service.get("depends_on") or []:
            assert dependency in all_services, f"{name} depends on undefined service {dependency}"
            condition = (
                (service["depends_on"] or {}).get(dependency, {})
                if isinstance(service["depends_on"], dict)
                else {}
            )
            if condition.get("condition") == "service_healthy":
                assert "healthcheck" in all_services[dependency], (
                    f"{name} waits for {dependency} to be healthy, but it has no healthcheck"
                )


# --- the data volume ---------------------------------------------------------------------


def test_every_callscope_service_uses_the_one_data_volume_at_the_path_it_is_told() -> None:
    # The views in callscope.duckdb hold absolute paths: every container must see the same path.
    dockerfile = dockerfile_instructions(DOCKERFILE.read_text())
    volume_line = next(i.arguments for i in dockerfile if i.keyword == "VOLUME")
    image_volumes = json.loads(volume_line) if volume_line.startswith("[") else volume_line.split()
    targets = set()
    for name, service in cli_services().items():
        named = [m for m in mounts(service) if not m.is_bind]
        assert len(named) == 1, f"{name} should mount exactly the data volume, has {named}"
        assert named[0].source in (compose().get("volumes") or {}), f"{name}: undeclared volume"
        assert not named[0].read_only
        target = named[0].target
        targets.add((named[0].source, target))
        env = environment(service)
        assert env.get(settings_module.CALLSCOPE_DATA) == target, f"{name}: CALLSCOPE_DATA != {target}"
        _, params = parsed_command(name)
        if "data" in params and params["data"] is not None:
            assert Path(params["data"]) == Path(target), f"{name}: --data is not the volume path"
    assert len(targets) == 1, f"callscope services disagree on the data volume: {targets}"
    ((_, target),) = targets
    assert image_volumes == [target], "the Dockerfile's VOLUME is not the compose data path"


# --- environment variables ---------------------------------------------------------------


def _callscope_env_names() -> set[str]:
    """Every CALLSCOPE_* name that appears as a string literal in the installed packages' code."""
    names: set[str] = set()
    for package in ("callscope", "collectors", "pipeline", "dashboard", "simulator"):
        for path in (ROOT / package).rglob("*.py"):
            names.update(re.findall(r"[\"'](CALLSCOPE_[A-Z0-9_]+)[\"']", path.read_text()))
    return names


def _otel_env_names() -> set[str]:
    from opentelemetry.sdk import environment_variables

    return {v for k, v in vars(environment_variables).items() if k.startswith("OTEL_") and isinstance(v, str)}


def _streamlit_env_names() -> set[str]:
    from streamlit import config

    return {"STREAMLIT_" + key.upper().replace(".", "_") for key in config._config_options_template}


def test_callscope_services_set_only_environment_variables_the_code_reads() -> None:
    known = _callscope_env_names() | _otel_env_names() | _streamlit_env_names()
    assert settings_module.CALLSCOPE_DATA in known and "OTEL_EXPORTER_OTLP_ENDPOINT" in known
    for name, service in callscope_services().items():
        for variable in environment(service):
            assert variable in known, f"service {name} sets {variable}, which no callscope code reads"


def test_settings_in_compose_are_valid_settings() -> None:
    for service in callscope_services().values():
        env = {k: interpolate(v) for k, v in environment(service).items()}
        settings = settings_module.Settings.from_environ(env)  # SettingsError names a bad variable
        # The compose defaults are the code's defaults: a deployment judges calls like a laptop.
        assert settings.grace_seconds == settings_module.Settings().grace_seconds
        assert settings.answer_url_timeout_ms == settings_module.Settings().answer_url_timeout_ms


def test_collector_env_references_are_passed_to_the_collector() -> None:
    provided = environment(services()["otel-collector"])
    for variable in env_references((DEPLOY / "otel-collector.yaml").read_text()):
        assert variable in provided, f"otel-collector.yaml reads ${{env:{variable}}}, compose omits it"
        assert variable in _callscope_env_names(), f"{variable} is not a callscope setting"


# --- ports and endpoints -----------------------------------------------------------------


def test_ingest_listens_where_the_collector_and_the_healthcheck_send() -> None:
    _, params = parsed_command("ingest")
    port = params["port"]
    ingest = services()["ingest"]
    assert params["host"] == "0.0.0.0", "inside a container, ingest must listen on every interface"
    assert port in exposed_ports(ingest)
    healthcheck = " ".join(ingest["healthcheck"]["test"])
    assert f"127.0.0.1:{port}/healthz" in healthcheck

    exporter = collector_config()["exporters"]["otlphttp/callscope"]
    host, exporter_port, path = host_port(exporter["endpoint"])
    assert (host, exporter_port) == ("ingest", port)
    assert path in ("", "/"), "otlphttp appends /v1/traces itself; the endpoint must be the base URL"


def test_collector_exports_to_jaeger_on_a_port_jaeger_listens_on() -> None:
    exporter = collector_config()["exporters"]["otlp/jaeger"]
    host, port, _ = host_port(exporter["endpoint"])
    assert host == "jaeger"
    grpc = jaeger_config()["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    assert port == listen_port(grpc) == 4317
    assert port in exposed_ports(services()["jaeger"])
    assert exporter["tls"]["insecure"] is True, "jaeger's receiver has no TLS in this deployment"


def test_jaeger_listens_for_otlp_on_4317_and_4318_and_serves_the_ui_on_16686() -> None:
    config = jaeger_config()
    protocols = config["receivers"]["otlp"]["protocols"]
    assert listen_port(protocols["grpc"]["endpoint"]) == 4317
    assert listen_port(protocols["http"]["endpoint"]) == 4318
    assert {4317, 4318} <= exposed_ports(services()["jaeger"])
    ui_port = listen_port(config["extensions"]["jaeger_query"]["http"]["endpoint"])
    assert ui_port == 16686
    assert any(p.container == ui_port for p in published_ports(services()["jaeger"]))
    for protocol in protocols.values():
        assert protocol["endpoint"].startswith("0.0.0.0:"), "Jaeger must listen beyond its container"


def test_the_collector_receives_otlp_on_the_ports_it_publishes() -> None:
    protocols = collector_config()["receivers"]["otlp"]["protocols"]
    receiver_ports = {listen_port(p["endpoint"]) for p in protocols.values()}
    assert receiver_ports == {4317, 4318}
    published = {p.container for p in published_ports(services()["otel-collector"])}
    assert receiver_ports <= published


def test_root_spans_go_to_jaeger_otlp_http_receiver() -> None:
    # build stores the roots in the data dir itself; sending them through the collector would
    # store each one twice.
    endpoints = environment(services()["build"])[settings_module.CALLSCOPE_OTLP_ENDPOINTS]
    parsed = settings_module.Settings.from_environ(
        {settings_module.CALLSCOPE_OTLP_ENDPOINTS: endpoints}
    ).otlp_endpoints
    assert parsed, "build must emit the minivoice.call roots to Jaeger"
    http_port = listen_port(jaeger_config()["receivers"]["otlp"]["protocols"]["http"]["endpoint"])
    assert http_port in exposed_ports(services()["jaeger"])
    for endpoint in parsed:
        assert host_port(endpoint) == ("jaeger", http_port, "/v1/traces")


def test_demo_services_export_to_the_collector() -> None:
    demo = {n: s for n, s in services().items() if "demo" in (s.get("profiles") or [])}
    http_port = listen_port(collector_config()["receivers"]["otlp"]["protocols"]["http"]["endpoint"])
    exporting = 0
    for name, service in demo.items():
        endpoint = environment(service).get("OTEL_EXPORTER_OTLP_ENDPOINT")
        if endpoint is not None:
            exporting += 1
            assert host_port(endpoint)[:2] == ("otel-collector", http_port), name
    assert exporting >= 1, "the demo app must send its spans to the collector"


def test_dashboard_and_jaeger_links_point_at_published_ports() -> None:
    dashboard = services()["dashboard"]
    _, params = parsed_command("dashboard")
    assert params["address"] == "0.0.0.0"
    (published,) = [p for p in published_ports(dashboard) if p.container == params["port"]]
    jaeger_ui = next(p for p in published_ports(services()["jaeger"]) if p.container == 16686)
    for name, service in callscope_services().items():
        env = environment(service)
        if settings_module.CALLSCOPE_DASHBOARD_URL in env:
            _, port, _ = host_port(env[settings_module.CALLSCOPE_DASHBOARD_URL])
            assert port == published.host, f"{name}: CALLSCOPE_DASHBOARD_URL is not the dashboard"
        if settings_module.CALLSCOPE_JAEGER_URL in env:
            _, port, _ = host_port(env[settings_module.CALLSCOPE_JAEGER_URL])
            assert port == jaeger_ui.host, f"{name}: CALLSCOPE_JAEGER_URL is not Jaeger's UI"


def test_no_two_services_publish_the_same_host_port() -> None:
    seen: dict[int, str] = {}
    for name, service in services().items():
        for port in published_ports(service):
            assert port.host not in seen, f"{name} and {seen.get(port.host)} both publish {port.host}"
            seen[port.host] = name


# --- collector and Jaeger configs --------------------------------------------------------


@pytest.mark.parametrize("path", [*COLLECTOR_CONFIGS, DEPLOY / "jaeger.yaml"], ids=lambda p: p.name)
def test_pipelines_reference_defined_components_and_nothing_is_left_unused(path: Path) -> None:
    config = load_yaml(path)
    used = pipeline_components(config)
    assert used["receivers"] and used["exporters"], f"{path.name} has no complete traces pipeline"
    for kind, ids in used.items():
        defined = set(config.get(kind) or {})
        assert ids <= defined, f"{path.name}: pipelines use undefined {kind} {ids - defined}"
        assert defined <= ids, f"{path.name}: {kind} {defined - ids} are defined but unused"
    extensions = set((config.get("service") or {}).get("extensions") or [])
    assert extensions <= set(config.get("extensions") or {}), f"{path.name}: undefined extension"
    for pipeline_id in config["service"]["pipelines"]:
        assert pipeline_id.split("/")[0] == "traces", f"{path.name}: {pipeline_id} is not a traces pipeline"


def test_jaeger_storage_names_line_up() -> None:
    config = jaeger_config()
    backends = set(config["extensions"]["jaeger_storage"]["backends"])
    assert config["extensions"]["jaeger_query"]["storage"]["traces"] in backends
    assert config["exporters"]["jaeger_storage_exporter"]["trace_storage"] in backends


def test_jaeger_runs_with_the_mounted_config_and_ui_config() -> None:
    jaeger = services()["jaeger"]
    service_name, config_mount = bind_mount_of("jaeger.yaml")
    assert service_name == "jaeger" and config_mount.read_only
    args = command_args(jaeger)
    assert args[args.index("--config") + 1] == config_mount.target
    ui_service, ui_mount = bind_mount_of("jaeger-ui.json")
    assert ui_service == "jaeger"
    assert jaeger_config()["extensions"]["jaeger_query"]["ui"]["config_file"] == ui_mount.target


def test_the_collector_runs_with_the_mounted_config() -> None:
    service_name, mount = bind_mount_of("otel-collector.yaml")
    assert service_name == "otel-collector" and mount.read_only
    assert any(arg == f"--config={mount.target}" for arg in command_args(services()["otel-collector"]))


def test_every_bind_mounted_file_exists_in_the_repo() -> None:
    for name, service in services().items():
        for mount in mounts(service):
            if mount.is_bind:
                assert (ROOT / mount.source).is_file(), f"{name} mounts missing file {mount.source}"


# --- Jaeger UI links back to the dashboard -----------------------------------------------


def _path_parts(expression: ast.expr) -> list[str]:
    """The string parts of a path expression such as `HERE / "screens" / "x.py"`, left to right."""
    if isinstance(expression, ast.BinOp):
        return _path_parts(expression.left) + _path_parts(expression.right)
    if isinstance(expression, ast.Constant) and isinstance(expression.value, str):
        return [expression.value]
    return []


def dashboard_call_page() -> tuple[str, Path]:
    """(URL path, script) of the dashboard's call-detail page, read from the `st.Page` list in app.py.

    app.py renders when imported, so its page list is read with `ast`, not imported.
    """
    app_py = ROOT / "dashboard" / "app.py"
    for node in ast.walk(ast.parse(app_py.read_text())):
        if not (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "Page" and node.args):
            continue
        # The script path, e.g. `HERE / "screens" / "call_detail.py"`: its string parts, in order.
        parts = _path_parts(node.args[0])
        if not parts or parts[-1] != "call_detail.py":
            continue
        keywords = {k.arg: k.value for k in node.keywords}
        assert "url_path" in keywords, "the call page has no fixed url_path, so links cannot reach it"
        return str(ast.literal_eval(keywords["url_path"])), app_py.parent.joinpath(*parts)
    raise AssertionError("dashboard/app.py has no call_detail.py page")


def reads_query_parameter(script: Path, name: str) -> bool:
    """Whether a Streamlit script takes `name` from the URL query: `st.query_params[...]`/`.get(...)`,
    or a widget with `key=name` bound to the query parameters."""
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.Call):
            keywords = {k.arg: k.value for k in node.keywords}
            key, bind = keywords.get("key"), keywords.get("bind")
            if (
                isinstance(key, ast.Constant)
                and key.value == name
                and isinstance(bind, ast.Constant)
                and bind.value == "query-params"
            ):
                return True
            getter = getattr(node.func, "attr", None) == "get" and "query_params" in ast.unparse(node.func)
            first = node.args[0] if node.args else None
            if getter and isinstance(first, ast.Constant) and first.value == name:
                return True
        if (
            isinstance(node, ast.Subscript)
            and "query_params" in ast.unparse(node.value)
            and isinstance(node.slice, ast.Constant)
            and node.slice.value == name
        ):
            return True
    return False


def test_jaeger_links_the_call_id_tag_to_the_dashboard_call_page() -> None:
    ui = json.loads((DEPLOY / "jaeger-ui.json").read_text())
    (pattern,) = [p for p in ui["linkPatterns"] if p.get("key") == CALL_ID_ATTRIBUTE]
    assert pattern["type"] == "tags"
    template = f"#{{{CALL_ID_ATTRIBUTE}}}"
    assert template in pattern["url"] and pattern["text"]
    for field in ("url", "text"):
        for variable in re.findall(r"#\{([^}|]+)", pattern[field]):
            assert variable.strip() == CALL_ID_ATTRIBUTE, f"{field} uses unknown variable {variable}"

    url = pattern["url"].replace(template, "call_123")
    host, port, path = host_port(url)
    dashboard_port = next(
        p.host
        for p in published_ports(services()["dashboard"])
        if p.container == parsed_command("dashboard")[1]["port"]
    )
    assert (host, port) == ("localhost", dashboard_port)
    url_path, script = dashboard_call_page()
    assert path.strip("/") == url_path.strip("/")
    assert url.endswith("?call_id=call_123")
    assert reads_query_parameter(script, "call_id"), f"{script.name} does not read ?call_id="


# --- the image -----------------------------------------------------------------------------


def _stages() -> list[list[Instruction]]:
    """The Dockerfile's build stages, each a list of instructions starting with its FROM."""
    stages: list[list[Instruction]] = []
    for instruction in dockerfile_instructions(DOCKERFILE.read_text()):
        if instruction.keyword == "FROM":
            stages.append([])
        assert stages, "the Dockerfile must start with FROM"
        stages[-1].append(instruction)
    return stages


def test_dockerfile_builds_a_non_root_callscope_image_with_the_dashboard_extra() -> None:
    stages = _stages()
    for stage in stages:
        assert stage[0].arguments.split()[0] == "python:3.11-slim", stage[0]
    final = stages[-1]
    installs = [i.arguments for i in final if i.keyword == "RUN" and "pip install" in i.arguments]
    assert any("callscope[dashboard]" in run or ".[dashboard]" in run for run in installs), installs
    users = [i.arguments for i in final if i.keyword == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must not run as root"
    entrypoint = next(i.arguments for i in final if i.keyword == "ENTRYPOINT")
    assert json.loads(entrypoint) == ["callscope"]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "callscope" in pyproject["project"]["scripts"]
    assert pyproject["project"]["requires-python"] == ">=3.11"


def test_dockerfile_copies_every_package_and_builds_the_c_extension() -> None:
    copied = set()
    stages = _stages()
    for stage in stages:
        for instruction in stage:
            if instruction.keyword == "COPY" and not instruction.arguments.startswith("--from="):
                *sources, _ = instruction.arguments.split()
                for source in sources:
                    assert (ROOT / source).exists(), f"COPY {source}: no such file in the repo"
                    copied.add(PurePosixPath(source).parts[0])
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    includes = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {pattern.rstrip("*") for pattern in includes}
    assert packages <= copied, f"the image lacks {packages - copied}"
    assert {"pyproject.toml", pyproject["project"]["readme"]} <= copied
    if (ROOT / "setup.py").exists():
        # setup.py builds optional C extensions: without it (or a compiler) they silently vanish.
        assert "setup.py" in copied
        (builder,) = [s for s in stages if any("setup.py" in i.arguments for i in s if i.keyword == "COPY")]
        assert any(i.keyword == "RUN" and "gcc" in i.arguments for i in builder), "no C compiler"
        final_runs = " ".join(i.arguments for i in stages[-1] if i.keyword == "RUN")
        for module in re.findall(r'Extension\(\s*"([\w.]+)"', (ROOT / "setup.py").read_text()):
            assert f"import {module}" in final_runs, f"the image does not check that {module} was built"

    ignored = {line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip()}
    assert {".git", ".venv"} <= ignored, "the build context must not carry .git or .venv"
    assert not ignored & copied, f".dockerignore hides what the Dockerfile copies: {ignored & copied}"
