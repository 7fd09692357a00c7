"""docker/: the compose file against the Compose Specification schema, and the Dockerfile against pyproject.

No Docker engine runs where the tests run, so the files are checked statically: the compose file
validates against the vendored Compose Specification JSON schema (tests/data/compose-spec/) and has
the services the README promises, wired to each other; the Dockerfile builds FROM the official
Airflow image of the Airflow version installed here, on a Python the package supports, and installs
the package it copies.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.conftest import REPO

DOCKER = REPO / "docker"
SCHEMA = REPO / "tests" / "data" / "compose-spec" / "compose-spec.json"
AIRFLOW_SERVICES = ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "docker-compose.yaml").read_text())


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _dockerfile() -> list[tuple[str, str]]:
    """Instructions as ``(KEYWORD, arguments)``, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (DOCKER / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines
            if line and not line.startswith("#")]


def test_compose_file_follows_the_compose_specification(compose):
    validator = jsonschema.Draft201909Validator(json.loads(SCHEMA.read_text()))
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_schema_catches_a_broken_compose_file(compose):
    """The validation above can fail: a misspelt key or a wrong type is refused."""
    validator = jsonschema.Draft201909Validator(json.loads(SCHEMA.read_text()))
    broken = json.loads(json.dumps(compose))
    broken["services"]["redis"]["healthchek"] = broken["services"]["redis"].pop("healthcheck")
    broken["services"]["postgres"]["ports"] = "5432:5432"
    assert len(list(validator.iter_errors(broken))) >= 2


def test_compose_has_the_promised_services_wired_together(compose):
    services = compose["services"]
    for name in ("postgres", "redis", "airflow-init", *AIRFLOW_SERVICES, "ascora-emulator", "twenty-emulator"):
        assert name in services, name
    workers = [n for n, s in services.items() if "celery worker" in str(s.get("command", ""))]
    assert len(workers) == 2 and len({services[w]["hostname"] for w in workers}) == 2, workers
    for name, service in services.items():
        for needed in service.get("depends_on") or {}:
            assert needed in services, f"{name} depends on unknown service {needed}"
    for name in (*AIRFLOW_SERVICES, *workers):
        env = services[name]["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert services[name]["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}, name
        # Every worker must see the same staging and the same ledger.
        assert "ascora-staging:" + env["ASCORA_STAGING_PATH"] in services[name]["volumes"], name
        assert env["ASCORA_LEDGER_URL"].startswith("postgresql") and "@postgres/" in env["ASCORA_LEDGER_URL"]


def test_connections_point_at_the_emulators(compose):
    services = compose["services"]
    env = services["airflow-worker-1"]["environment"]
    for conn, emulator in (("AIRFLOW_CONN_ASCORA_DEFAULT", "ascora-emulator"),
                           ("AIRFLOW_CONN_TWENTY_DEFAULT", "twenty-emulator")):
        # ${VAR:-default} is compose interpolation: substitute the default to read the JSON.
        conn_json = json.loads(re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", env[conn]))
        command = services[emulator]["command"]
        port = command[command.index("--port") + 1]
        assert conn_json["host"] == f"http://{emulator}:{port}", conn
        assert f"{port}:{port}" in services[emulator]["ports"]
        key_default = re.search(r"\$\{(\w+):-", env[conn]).group(1)
        assert f"${{{key_default}:-" in command[command.index("--api-key") + 1], "emulator and connection share the key"


def test_env_example_defines_every_variable_the_compose_file_reads(compose):
    text = (DOCKER / "docker-compose.yaml").read_text()
    used = set(re.findall(r"(?<!\$)\$\{(\w+)(?::-[^}]*)?\}", text))
    defined = {line.split("=", 1)[0] for line in (DOCKER / ".env.example").read_text().splitlines()
               if line and not line.startswith("#")}
    assert used <= defined, used - defined


def test_dockerfile_builds_the_provider_on_the_installed_airflow(pyproject):
    import airflow

    instructions = _dockerfile()
    (base,) = [args for kw, args in instructions if kw == "FROM"]
    image, tag = base.split(":")
    assert image == "apache/airflow"
    airflow_version, python = re.fullmatch(r"(\d+\.\d+\.\d+)-python(\d+\.\d+)", tag).groups()
    assert airflow_version == airflow.__version__, "pin the image to the Airflow the tests run on"
    minimum = pyproject["project"]["requires-python"].removeprefix(">=")
    assert tuple(map(int, python.split("."))) >= tuple(map(int, minimum.split(".")))
    assert f"Programming Language :: Python :: {python}" in pyproject["project"]["classifiers"]
    assert f"{sys.version_info.major}.{sys.version_info.minor}" == python, "the image runs the Python tested here"
    args = {kw_args.split("=")[0]: kw_args.split("=")[1] for kw, kw_args in instructions if kw == "ARG"}
    assert args["AIRFLOW_VERSION"] == airflow_version

    copies = [shlex.split(a) for kw, a in instructions if kw == "COPY"]
    copied = {src: dest for *flags_and_srcs, dest in copies for src in flags_and_srcs if not src.startswith("--")}
    package_dir = copied["pyproject.toml"].rstrip("/")
    packages = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    assert any(copied.get(p.rstrip("*")) == f"{package_dir}/{p.rstrip('*')}" for p in packages), copied
    assert copied["dags"] == "/opt/airflow/dags"
    for src in copied:
        assert (REPO / src).exists(), f"COPY {src}: no such file in the repository"

    (install,) = [a for kw, a in instructions if kw == "RUN" and "pip install" in a]
    words = shlex.split(install)
    assert f"apache-airflow=={airflow_version}" in words or "apache-airflow==${AIRFLOW_VERSION}" in words
    assert any(w.startswith(package_dir) for w in words), "pip installs the copied package"
    assert f"pip show {pyproject['project']['name']}" in install


def test_dockerignore_lets_the_copied_files_through():
    patterns = (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
    for kw, args in _dockerfile():
        if kw == "COPY":
            for src in [w for w in shlex.split(args)[:-1] if not w.startswith("--")]:
                assert f"!{src.rstrip('/')}" in {p.rstrip("/") for p in patterns}, src


def test_readme_and_operations_explain_running_it():
    operations = (REPO / "docs" / "operations.md").read_text()
    assert "## Running with Docker Compose" in operations
    section = operations.split("## Running with Docker Compose", 1)[1]
    assert "docker compose" in section and "docker/.env.example" in section
    assert "docs/operations.md#running-with-docker-compose" in (REPO / "README.md").read_text()
