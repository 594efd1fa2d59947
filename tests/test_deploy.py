"""Deployment files, checked without a Docker engine: the Dockerfile and the compose file
say what the README promises, and their commands are real entry points of the package."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml
from cli_help import assert_real_command

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def stages(dockerfile: str) -> list[str]:
    """The Dockerfile split at each FROM: one string per build stage."""
    parts = re.split(r"(?m)^FROM ", dockerfile)
    return ["FROM " + p for p in parts[1:]]


def command_of(service: str) -> list[str]:
    cmd = SERVICES[service]["command"]
    return shlex.split(cmd) if isinstance(cmd, str) else list(cmd)


# -- Dockerfile ---------------------------------------------------------------------


def test_dockerfile_is_multi_stage_on_python_311_slim():
    assert re.search(r"(?m)^ARG PYTHON_IMAGE=python:3\.11-slim$", DOCKERFILE)
    assert len(stages(DOCKERFILE)) >= 2
    assert all(s.startswith("FROM ${PYTHON_IMAGE}") for s in stages(DOCKERFILE))


def test_dockerfile_installs_cpu_torch_from_an_overridable_index():
    assert re.search(
        r"(?m)^ARG TORCH_INDEX_URL=https://download\.pytorch\.org/whl/cpu$", DOCKERFILE
    )
    assert "torch==2.13.0" in DOCKERFILE and '"${TORCH_INDEX_URL}"' in DOCKERFILE


def test_final_image_has_no_compilers_runs_as_non_root_and_checks_health():
    final = stages(DOCKERFILE)[-1]
    assert not re.search(r"build-essential|gcc|g\+\+|apt-get install", final)
    users = re.findall(r"(?m)^USER (\S+)", final)
    assert users and users[-1] not in ("root", "0")
    health = re.search(r"(?ms)^HEALTHCHECK .*?CMD (.*?)$", final)
    assert health and "/healthz" in health.group(1)
    assert "COPY --from=build /opt/venv /opt/venv" in final


def test_dockerignore_keeps_data_artifacts_and_venvs_out():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {"artifacts", "data", ".venv", ".git"} <= set(ignored)


# -- docker-compose.yml -------------------------------------------------------------


def test_compose_has_redis_trainer_api():
    assert {"redis", "trainer", "api"} <= set(SERVICES)


def test_redis_is_official_private_password_protected_and_health_checked():
    redis = SERVICES["redis"]
    assert redis["image"].startswith("redis:")
    assert "ports" not in redis
    assert "${REDIS_PASSWORD" in redis["environment"]["REDIS_PASSWORD"]
    assert "--requirepass" in " ".join(command_of("redis"))
    assert "ping" in " ".join(redis["healthcheck"]["test"])


def test_api_waits_for_healthy_redis_and_a_successful_trainer():
    api = SERVICES["api"]
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"
    assert api["depends_on"]["trainer"]["condition"] == "service_completed_successfully"
    assert "/readyz" in " ".join(api["healthcheck"]["test"])
    assert "@redis:6379" in api["environment"]["REDIS_URL"]
    assert "${REDIS_PASSWORD" in api["environment"]["REDIS_URL"]


def test_trainer_is_one_shot():
    assert SERVICES["trainer"].get("restart", "no") == "no"


def test_api_scales_without_clashes():
    for name, service in SERVICES.items():
        assert "container_name" not in service, name
    assert "ports" not in SERVICES["api"], "replicas cannot share a fixed host port"
    proxy_ports = SERVICES["proxy"]["ports"]
    assert len(proxy_ports) == 1
    conf = (ROOT / SERVICES["proxy"]["volumes"][0].split(":")[0]).read_text()
    assert "proxy_pass $api" in conf and "resolver 127.0.0.11" in conf


def test_trainer_and_api_share_the_named_artifacts_volume():
    def mounts(service: str) -> dict[str, str]:
        return dict(v.split(":")[:2] for v in SERVICES[service]["volumes"])

    assert "artifacts" in COMPOSE["volumes"]
    assert mounts("trainer")["artifacts"] == mounts("api")["artifacts"] == "/artifacts"
    assert SERVICES["api"]["environment"]["ARTIFACTS_DIR"] == "/artifacts/current"
    assert "/artifacts" in command_of("trainer")


@pytest.mark.parametrize("service", ["trainer", "api"])
def test_commands_name_real_entry_points(service):
    assert_real_command(command_of(service))
