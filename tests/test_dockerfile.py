"""The Dockerfile, checked without a Docker engine (there is none where the tests run): the image installs the
service's extra, runs as a user, publishes the port and checks its health; and the exact HEALTHCHECK command,
run here with this Python, passes against a real ``imgsearch serve`` and fails when nothing answers."""

from __future__ import annotations

import json
import re
import shlex
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.samples import SampleCatalogue
from tests.test_service import Service, _as_superuser, _free_port

DOCKERFILE = Path(__file__).resolve().parent.parent / "Dockerfile"
#: Where the HEALTHCHECK asks: the service's default port, on the container's own loopback.
PROBED = "http://127.0.0.1:8000/livez"


def _instructions(text: str) -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (KEYWORD, arguments), continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue  # Docker drops comment lines, also inside a continued instruction
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        keyword, _, arguments = pending.strip().partition(" ")
        instructions.append((keyword.upper(), " ".join(arguments.split())))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued instruction"
    return instructions


def _final_stage() -> list[tuple[str, str]]:
    """The instructions of the image that is shipped: everything after the last FROM."""
    instructions = _instructions(DOCKERFILE.read_text(encoding="utf-8"))
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from + 1 :]


def _one(stage: list[tuple[str, str]], keyword: str) -> str:
    found = [arguments for kw, arguments in stage if kw == keyword]
    assert len(found) == 1, f"{keyword}: {found}"
    return found[0]


def _healthcheck() -> tuple[dict[str, str], list[str]]:
    """The HEALTHCHECK's options (``--timeout`` ...) and its command, which must be in exec (JSON) form."""
    options: dict[str, str] = {}
    rest = _one(_final_stage(), "HEALTHCHECK")
    while rest.startswith("--"):
        option, _, rest = rest.partition(" ")
        name, _, value = option[2:].partition("=")
        options[name] = value
    keyword, _, command = rest.partition(" ")
    assert keyword == "CMD", rest
    parsed = json.loads(command)  # exec form: no shell, which the slim image has but should not need
    assert isinstance(parsed, list) and all(isinstance(part, str) for part in parsed)
    return options, parsed


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", duration)
    assert match, duration
    return float(match[1]) * {"ms": 0.001, "s": 1, "m": 60}[match[2]]


def test_the_image_serves_as_a_user_with_a_healthcheck() -> None:
    stage = _final_stage()
    installs = [arguments for keyword, arguments in stage if keyword == "RUN" and "pip install" in arguments]
    assert len(installs) == 1 and "[serve]" in installs[0]  # FastAPI, uvicorn and python-multipart
    user = _one(stage, "USER")
    assert user not in ("root", "0") and not user.startswith(("root:", "0:"))
    created = [shlex.split(arguments) for keyword, arguments in stage if keyword == "RUN" and "useradd" in arguments]
    assert any(user in words[words.index("useradd") :] for words in created), "USER is not created in the image"
    assert _one(stage, "EXPOSE").split() == ["8000"]
    assert json.loads(_one(stage, "ENTRYPOINT")) == ["imgsearch"]  # `docker run IMAGE db upgrade` stays the CLI
    options, command = _healthcheck()
    assert command[:2] == ["python", "-c"] and PROBED in command[2]
    assert not {"curl", "wget"} & set(re.findall(r"\w+", " ".join(command)))
    timeout = re.search(r"timeout=(\d+(?:\.\d+)?)", command[2])
    assert timeout and float(timeout[1]) < _seconds(options["timeout"])  # the probe gives up before Docker does
    assert _seconds(options["start-period"]) >= 60  # the model loads before the port opens


def _run_healthcheck(port: int) -> subprocess.CompletedProcess[str]:
    """The Dockerfile's exact HEALTHCHECK command, with this Python and the given port instead of 8000."""
    _, command = _healthcheck()
    assert " ".join(command).count(PROBED) == 1
    probe = [sys.executable, *(part.replace(PROBED, f"http://127.0.0.1:{port}/livez") for part in command[1:])]
    return subprocess.run(probe, capture_output=True, text=True, timeout=30)


@pytest.fixture
def catalogue_service(
    make_database: Callable[..., str], sample_catalogue: SampleCatalogue, fake_weights: str
) -> Iterator[tuple[Service, str]]:
    url = make_database(template=sample_catalogue.template)
    running = Service(url, fake_weights)
    yield running, url
    running.close()


def test_the_healthcheck_passes_while_the_service_answers(catalogue_service: tuple[Service, str]) -> None:
    service, url = catalogue_service
    assert service.client.get("/readyz").status_code == 200
    passed = _run_healthcheck(service.port)
    assert passed.returncode == 0, passed.stderr
    # Liveness, not readiness: with the database gone the container is still healthy (restarting it would not
    # bring the database back), while /readyz takes it out of a load balancer.
    _as_superuser(url, f'DROP DATABASE "{make_url(url).database}" WITH (FORCE)', database="postgres")
    assert service.client.get("/readyz").status_code == 503
    still = _run_healthcheck(service.port)
    assert still.returncode == 0, still.stderr


def test_the_healthcheck_fails_when_nothing_answers() -> None:
    refused = _run_healthcheck(_free_port())  # nothing listens there
    assert refused.returncode == 1, refused.stderr  # Docker's "unhealthy" (2 is reserved)
    assert "Connection refused" in refused.stderr or "URLError" in refused.stderr
    with socket.socket() as hung:  # a process that accepts connections but never answers
        hung.bind(("127.0.0.1", 0))
        hung.listen()
        silent = _run_healthcheck(hung.getsockname()[1])
    assert silent.returncode == 1, silent.stderr
    assert "timed out" in silent.stderr
