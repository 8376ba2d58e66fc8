"""docker-compose.yml and the Citus image, read as files (no Docker engine needed): what a user relies on when
starting them, checked on every run because no CI here can start them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
CITUS_DIR = REPO / "docker" / "citus"
CITUS_NODES = ("citus-coordinator", "citus-worker-1", "citus-worker-2")
CITUS_WORKERS = CITUS_NODES[1:]

REQUIRED_VARIABLE = re.compile(r"\$\{[A-Z][A-Z0-9_]*:\?[^}]+\}")
DEFAULTED_VARIABLE = re.compile(r"\$\{[A-Z][A-Z0-9_]*:-(\.[^}]*)\}")


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(key): str(value) for key, value in env.items()}


def published_ports(service: dict[str, Any]) -> list[tuple[str | None, str]]:
    """(host address or None when it binds every interface, host port) of every port the service publishes."""
    ports = []
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            ports.append((entry.get("host_ip"), str(entry.get("published", ""))))
            continue
        parts = str(entry).split(":")
        if len(parts) == 3:
            ports.append((parts[0], parts[1]))
        elif len(parts) == 2:
            ports.append((None, parts[0]))
        else:
            ports.append((None, parts[0]))  # container port only: Docker picks a host port on every interface
    return ports


def volume_sources(service: dict[str, Any]) -> list[str]:
    """The host side of every volume: a path, a named volume, a ${VAR:?message} or ${VAR:-./path} variable."""
    sources = []
    for entry in service.get("volumes", []):
        if isinstance(entry, dict):
            sources.append(str(entry.get("source", "")))
        elif str(entry).startswith("${"):
            sources.append(str(entry)[: str(entry).index("}") + 1])
        else:
            sources.append(str(entry).split(":")[0])
    return sources


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_published_ports_bind_the_loopback_interface_only(name: str) -> None:
    for host, port in published_ports(SERVICES[name]):
        assert host == "127.0.0.1", f"{name} publishes port {port} on {host or 'every interface'}"


def test_no_two_services_publish_the_same_host_port() -> None:
    ports = [port for service in SERVICES.values() for _, port in published_ports(service)]
    assert len(ports) == len(set(ports)), ports
    assert published_ports(SERVICES["db"]) == [("127.0.0.1", "5432")]
    assert published_ports(SERVICES["citus-coordinator"]) == [("127.0.0.1", "5433")]


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_no_password_is_written_in_the_file(name: str) -> None:
    for key, value in environment(SERVICES[name]).items():
        if "PASSWORD" in key:
            assert REQUIRED_VARIABLE.fullmatch(value), f"{name}: {key} must be a ${{VAR:?message}} required variable"
        credentials = re.search(r"://[^/@\s]*:([^@\s]*)@", value)
        if credentials:
            assert REQUIRED_VARIABLE.fullmatch(credentials.group(1)), f"{name}: {key} holds a password"
    assert environment(SERVICES[name]).get("POSTGRES_HOST_AUTH_METHOD") != "trust", name


def test_every_postgres_server_requires_a_password() -> None:
    for name in ("db", *CITUS_NODES):
        assert "POSTGRES_PASSWORD" in environment(SERVICES[name]), name
    for name in CITUS_NODES:
        # Explicit for the Citus nodes, whose other nodes log in over the network.
        assert environment(SERVICES[name])["POSTGRES_HOST_AUTH_METHOD"] == "scram-sha-256", name


def test_a_plain_up_starts_the_db_service_only() -> None:
    always = sorted(name for name, service in SERVICES.items() if not service.get("profiles"))
    assert always == ["db"]
    assert SERVICES["imgsearch"]["profiles"] == ["cli"]
    assert SERVICES["api"]["profiles"] == ["serve"]


def test_the_api_service_serves_what_the_image_checks_and_exposes() -> None:
    api = SERVICES["api"]
    dockerfile = (REPO / "Dockerfile").read_text()
    command = api["command"]
    assert command[0] == "serve" and command[command.index("--port") + 1] == "8000"
    assert "EXPOSE 8000" in dockerfile and "127.0.0.1:8000/livez" in dockerfile  # the HEALTHCHECK's port
    assert published_ports(api) == [("127.0.0.1", "8000")]
    weights = environment(api)["IMGSEARCH_VGG16_WEIGHTS"]
    assert any(v.endswith(":/models:ro") for v in api["volumes"]) and weights.startswith("/models/")
    assert api["depends_on"]["db"]["condition"] == "service_healthy"
    # Long enough for serve's --shutdown-timeout (30 s by default) to let the searches under way finish.
    assert int(api["stop_grace_period"].rstrip("s")) > 30


def test_the_citus_services_are_all_behind_the_citus_profile() -> None:
    citus = sorted(name for name in SERVICES if name.startswith("citus"))
    assert citus == sorted([*CITUS_NODES, "citus-setup"])
    for name in citus:
        assert SERVICES[name]["profiles"] == ["citus"], name


@pytest.mark.parametrize("name", CITUS_WORKERS)
def test_the_workers_publish_no_port(name: str) -> None:
    assert "ports" not in SERVICES[name]
    assert SERVICES[name].get("network_mode") is None


def test_setup_waits_for_every_node_to_be_healthy() -> None:
    setup = SERVICES["citus-setup"]
    assert setup["depends_on"] == {node: {"condition": "service_healthy"} for node in CITUS_NODES}
    for node in (*CITUS_NODES, "db"):
        test = SERVICES[node]["healthcheck"]["test"]
        assert test[0] == "CMD-SHELL" and "pg_isready" in test[1], node
    # Over TCP, so that the temporary socket-only server of a first start does not count as ready.
    for node in CITUS_NODES:
        assert "-h 127.0.0.1" in SERVICES[node]["healthcheck"]["test"][1], node
    assert setup["restart"] == "no"
    assert environment(setup)["CITUS_COORDINATOR"] == "citus-coordinator"
    assert environment(setup)["CITUS_WORKERS"].split() == list(CITUS_WORKERS)


def test_all_citus_services_run_one_image_built_here() -> None:
    for name in (*CITUS_NODES, "citus-setup"):
        assert SERVICES[name]["build"] == "./docker/citus", name
        assert SERVICES[name]["image"] == SERVICES["citus-coordinator"]["image"], name
    assert SERVICES["citus-setup"]["command"] == ["citus-setup"]


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_no_service_gets_the_docker_socket_or_host_privileges(name: str) -> None:
    service = SERVICES[name]
    assert not any("docker.sock" in source for source in volume_sources(service)), name
    assert not service.get("privileged"), name
    assert service.get("network_mode") in (None, "bridge"), name
    assert not service.get("pid") and not service.get("cap_add"), name


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_build_contexts_and_mounted_paths_exist(name: str) -> None:
    service = SERVICES[name]
    if "build" in service:
        build = service["build"]
        context = REPO / (build if isinstance(build, str) else build.get("context", "."))
        dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        assert (context / dockerfile).is_file(), f"{name}: {context / dockerfile}"
    for source in volume_sources(service):
        default = DEFAULTED_VARIABLE.fullmatch(source)
        if default:  # ${VAR:-./path}: the default path must exist
            assert (REPO / default.group(1)).exists(), f"{name}: {source}"
        elif source.startswith("${"):
            assert REQUIRED_VARIABLE.fullmatch(source), f"{name}: {source}"
        elif source.startswith((".", "/")):
            assert (REPO / source).exists(), f"{name}: {source}"
        else:
            assert source in (COMPOSE.get("volumes") or {}), f"{name}: named volume {source} is not declared"


def test_every_node_keeps_its_data_in_its_own_named_volume() -> None:
    data = [volume_sources(SERVICES[name]) for name in ("db", *CITUS_NODES)]
    assert all(len(sources) == 1 for sources in data)
    assert len({sources[0] for sources in data}) == len(data)


def test_the_image_pins_one_postgres_major_for_citus_and_pgvector() -> None:
    dockerfile = (CITUS_DIR / "Dockerfile").read_text()
    base = re.search(r"^FROM citusdata/citus:(\d+\.\d+\.\d+)-pg(\d+)$", dockerfile, re.MULTILINE)
    assert base, "FROM must name a released citusdata/citus tag with its PostgreSQL major"
    major = base.group(2)
    assert f'test "$PG_MAJOR" = {major}' in dockerfile
    assert '"postgresql-$PG_MAJOR-pgvector"' in dockerfile
    assert SERVICES["citus-coordinator"]["image"].endswith(f"-pg{major}")
    copied = re.findall(r"^COPY (\S+) ", dockerfile, re.MULTILINE)
    assert copied == ["setup.sh"]
    assert all((CITUS_DIR / source).is_file() for source in copied)


def test_setup_authenticates_the_nodes_to_each_other_with_the_password() -> None:
    setup = (CITUS_DIR / "setup.sh").read_text()
    assert "pg_dist_authinfo" in setup and "citus_set_coordinator_host" in setup and "citus_add_node" in setup
    assert "CREATE EXTENSION IF NOT EXISTS citus" in setup and "CREATE EXTENSION IF NOT EXISTS vector" in setup
    assert "trust" not in setup
