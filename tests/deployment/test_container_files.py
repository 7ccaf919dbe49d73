"""The Dockerfile and docker-compose.yml, checked statically: there is no Docker engine on CI to build or start them.

tests/e2e/test_deployment.py runs the same commands the containers run, directly on this machine.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from urllib.parse import urlsplit

import pytest
from django.conf import settings

from devstack.open_files import WANTED_OPEN_FILES
from tests.deployment.compose import (
    COMPOSE_FILE,
    ENTRYPOINT,
    PROJECT_DIR,
    command,
    compose,
    dockerfile_instructions,
    image_environment,
    interpolate,
    service,
)

SERVICES = {"redis", "postgres", "gateway", "gateway-2", "feed-simulator", "relay-options", "relay-stocks"}
GATEWAYS = ("gateway", "gateway-2")
RELAYS = {"relay-options": "options", "relay-stocks": "stocks"}
BASE_IMAGE = "python:3.11-slim"
ROOT_USERS = {"root", "0", "0:0", "root:root"}


PLAIN_UP: dict[str, str] = {}
"""The environment of a plain `docker compose up`: every variable unset, so each takes its default."""


def duration_seconds(value: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for unit in sorted(units, key=len, reverse=True):
        if value.endswith(unit):
            return float(value[: -len(unit)]) * units[unit]
    raise ValueError(value)


def test_compose_has_its_services_each_with_a_health_check():
    services = compose()["services"]
    assert set(services) == SERVICES
    for name, definition in services.items():
        test = definition.get("healthcheck", {}).get("test")
        assert test and test[0] in {"CMD", "CMD-SHELL"}, f"{name} has no health check"


def test_gateway_starts_only_once_its_dependencies_are_healthy():
    depends_on = service("gateway")["depends_on"]
    assert depends_on == {name: {"condition": "service_healthy"} for name in {"redis", "postgres", *RELAYS}}
    # The second replica waits for the first, which applies the migrations; it does not migrate itself.
    assert service("gateway-2")["depends_on"] == {"gateway": {"condition": "service_healthy"}}
    assert service("gateway-2")["environment"]["MIGRATE_ON_START"] == "0"
    for relay in RELAYS:
        assert service(relay)["depends_on"] == {
            name: {"condition": "service_healthy"} for name in ("redis", "feed-simulator")
        }


def test_two_gateway_replicas_share_one_upstream_per_market_through_two_relays_each():
    for gateway in GATEWAYS:
        assert service(gateway)["environment"]["STREAM_FANOUT"] == "relay"
        assert "UPSTREAM_API_KEY" not in service(gateway)["environment"]  # only the relays talk to the feed
    for relay, market in RELAYS.items():
        assert command(relay, PLAIN_UP) == ["python", "manage.py", "run_feed_relay", "--market", market]
        assert service(relay)["deploy"]["replicas"] == 2
    simulator = command("feed-simulator", PLAIN_UP)
    assert simulator[simulator.index("--max-connections") + 1] == "1"  # like the real feed
    assert {interpolate(service(gateway)["ports"][0], PLAIN_UP).split(":")[0] for gateway in GATEWAYS} == {
        "8000", "8001"
    }


def test_each_relay_is_checked_on_the_readiness_of_its_probe_port():
    """Its health check asks ``/readyz`` on ``RELAY_PROBE_PORT`` (tests/e2e/test_relay_probes.py runs it)."""
    for relay in RELAYS:
        definition = service(relay)
        assert interpolate(definition["environment"]["RELAY_PROBE_PORT"], PLAIN_UP) == "9108"
        check = " ".join(definition["healthcheck"]["test"])
        assert "/readyz" in check and "RELAY_PROBE_PORT" in check
        assert "ports" not in definition  # an operator's port, reached inside the network, never published


def test_gateway_and_simulator_run_the_image_built_from_the_dockerfile():
    for name in (*GATEWAYS, "feed-simulator", *RELAYS):
        definition = service(name)
        assert definition["build"] == "."
        assert definition["image"] == service("gateway")["image"]
    assert command("gateway", PLAIN_UP) == command("gateway-2", PLAIN_UP) == ["start"]


def test_gateway_environment_points_at_the_compose_services():
    environment = {key: interpolate(str(value), PLAIN_UP) for key, value in service("gateway")["environment"].items()}
    database = urlsplit(environment["DATABASE_URL"])
    assert (database.scheme, database.hostname, database.port) == ("postgres", "postgres", 5432)
    postgres = service("postgres")["environment"]
    assert database.username == postgres["POSTGRES_USER"]
    assert database.password == interpolate(postgres["POSTGRES_PASSWORD"], PLAIN_UP)
    assert database.path == "/" + postgres["POSTGRES_DB"]
    assert urlsplit(environment["REDIS_URL"]).hostname == "redis"
    assert environment["DJANGO_SECRET_KEY"]
    published = interpolate(service("gateway")["ports"][0], PLAIN_UP)
    assert published == f"8000:{environment['GATEWAY_PORT']}"


def container_environment(name: str) -> dict[str, str]:
    """What a service's process sees under a plain `docker compose up`: the image's ENV, then the service's own."""
    machine = {key: value for key, value in os.environ.items() if not key.startswith(("DJANGO_", "REDIS_"))}
    service_env = {key: interpolate(str(value), PLAIN_UP) for key, value in service(name)["environment"].items()}
    return {**machine, **image_environment(), **service_env}


@pytest.mark.parametrize("name", [*GATEWAYS, *RELAYS])
def test_a_plain_compose_up_passes_the_deploy_check_with_debug_off(name):
    """Each service's settings load as the container loads them: debug off, so its default secret key must pass,
    and ``check --deploy`` finds nothing to warn about."""
    environment = container_environment(name)
    assert "DJANGO_DEBUG" not in environment
    checked = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
                             cwd=PROJECT_DIR, env=environment, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


def test_the_image_and_compose_declare_the_tls_proxy():
    assert image_environment()["DJANGO_HTTPS"] == "1"
    for gateway in GATEWAYS:
        assert container_environment(gateway)["DJANGO_HTTPS"] == "1"
        # A laptop without a proxy: `DJANGO_HTTPS=0 docker compose up` serves plain HTTP.
        assert interpolate(service(gateway)["environment"]["DJANGO_HTTPS"], {"DJANGO_HTTPS": "0"}) == "0"


def test_the_simulator_is_the_default_upstream():
    simulator = command("feed-simulator", PLAIN_UP)
    assert simulator[:3] == ["python", "-m", "streaming.simulator"]
    options = dict(zip(simulator[3::2], simulator[4::2], strict=True))
    assert options["--host"] == "0.0.0.0"
    for name in ("gateway", *RELAYS):
        environment = service(name)["environment"]
        for market in ("options", "stocks"):
            url = urlsplit(interpolate(environment[f"UPSTREAM_{market.upper()}_URL"], PLAIN_UP))
            assert (url.hostname, url.port, url.path) == ("feed-simulator", int(options["--port"]), f"/{market}")
    for relay in RELAYS:
        assert interpolate(service(relay)["environment"]["UPSTREAM_API_KEY"], PLAIN_UP) == options["--api-key"]


def test_a_real_upstream_replaces_the_simulator_through_the_environment():
    real = {"UPSTREAM_OPTIONS_URL": "wss://feed.example/options", "UPSTREAM_API_KEY": "real-key"}
    for relay in RELAYS:
        environment = service(relay)["environment"]
        assert interpolate(environment["UPSTREAM_OPTIONS_URL"], real) == real["UPSTREAM_OPTIONS_URL"]
        assert interpolate(environment["UPSTREAM_API_KEY"], real) == real["UPSTREAM_API_KEY"]
    assert interpolate(service("gateway")["environment"]["UPSTREAM_OPTIONS_URL"], real) == real["UPSTREAM_OPTIONS_URL"]


def test_compose_gives_the_gateway_time_to_drain_on_stop():
    for gateway in GATEWAYS:
        assert duration_seconds(service(gateway)["stop_grace_period"]) > settings.GATEWAY_SHUTDOWN_TIMEOUT


def test_compose_lets_each_gateway_hold_tens_of_thousands_of_sockets():
    for gateway in GATEWAYS:
        nofile = service(gateway)["ulimits"]["nofile"]
        assert nofile["soft"] == nofile["hard"] >= 30_000


def lowered_open_file_limit() -> None:
    """In the child: the soft limit most shells start with, under whatever hard limit this machine has."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))


def test_the_entrypoint_raises_the_open_file_limit_for_whatever_it_runs():
    report = "import resource; print(*resource.getrlimit(resource.RLIMIT_NOFILE))"
    ran = subprocess.run([str(ENTRYPOINT), sys.executable, "-c", report], preexec_fn=lowered_open_file_limit,
                         capture_output=True, text=True, check=True)
    soft, hard = map(int, ran.stdout.split())
    assert soft == hard > 1024  # 65,536 where the hard limit may be raised, else the hard limit
    assert soft >= min(WANTED_OPEN_FILES, resource.getrlimit(resource.RLIMIT_NOFILE)[1])


def test_the_open_file_helper_of_make_run_and_the_bench_raises_the_limit():
    report = ("from devstack.open_files import raise_open_file_limit; import resource; "
              "print(raise_open_file_limit(), *resource.getrlimit(resource.RLIMIT_NOFILE))")
    ran = subprocess.run([sys.executable, "-c", report], preexec_fn=lowered_open_file_limit, cwd=PROJECT_DIR,
                         capture_output=True, text=True, check=True)
    returned, soft, hard = map(int, ran.stdout.split())
    assert returned == soft == hard > 1024
    assert soft >= min(WANTED_OPEN_FILES, resource.getrlimit(resource.RLIMIT_NOFILE)[1])


def test_dockerfile_uses_the_slim_base_and_runs_as_a_non_root_user():
    instructions = dockerfile_instructions()
    assert instructions[0] == ("FROM", BASE_IMAGE)
    users = [arguments for keyword, arguments in instructions if keyword == "USER"]
    assert users and users[-1] not in ROOT_USERS
    keywords = [keyword for keyword, _ in instructions]
    assert keywords.index("USER") > max(index for index, keyword in enumerate(keywords) if keyword in {"RUN", "COPY"})


def test_dockerfile_entrypoint_and_command_are_the_deploy_script():
    instructions = dict(dockerfile_instructions())
    entrypoint = json.loads(instructions["ENTRYPOINT"])
    assert entrypoint == [str(ENTRYPOINT.relative_to(PROJECT_DIR))]
    assert os.access(ENTRYPOINT, os.X_OK)
    assert json.loads(instructions["CMD"]) == ["start"]


def test_dockerfile_copies_only_files_that_exist():
    for keyword, arguments in dockerfile_instructions():
        if keyword == "COPY":
            *sources, _destination = arguments.split()
            for source in sources:
                assert (PROJECT_DIR / source).exists(), source


def test_dockerignore_keeps_local_state_out_of_the_image():
    ignored = set((PROJECT_DIR / ".dockerignore").read_text().split())
    assert {".git", ".venv", "var", "tests"} <= ignored


@pytest.mark.skipif(
    shutil.which("docker") is None
    or subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0,
    reason="the docker compose plugin is not installed",
)
def test_docker_compose_accepts_the_file():
    subprocess.run(["docker", "compose", "-f", str(COMPOSE_FILE), "config", "--quiet"], check=True)
