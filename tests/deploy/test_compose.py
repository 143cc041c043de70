"""docker-compose.yml and the Dockerfiles, checked without a Docker engine.

Nothing here builds an image: the files are parsed and every name they use is checked
against what the repository really has (paths, console scripts, their flags, recipes).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"


def load_compose() -> dict[str, Any]:
    with COMPOSE_FILE.open(encoding="utf-8") as f:
        data = yaml.safe_load(f)
    assert isinstance(data, dict)
    return data


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending += line
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        keyword, _, arguments = pending.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def exec_form(path: Path, keyword: str) -> list[str]:
    """The JSON (exec) form of the last CMD or ENTRYPOINT; shell forms are refused."""
    found = [arguments for name, arguments in dockerfile_instructions(path) if name == keyword]
    assert found, f"{path.name} has no {keyword}"
    value = json.loads(found[-1])  # shell form would not parse, and would break signals
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def console_scripts() -> dict[str, str]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return dict(tomllib.load(f)["project"]["scripts"])


def cli_help(script: str) -> str:
    """`--help` of a console script, run through its entry point in this interpreter."""
    module, _, function = console_scripts()[script].partition(":")
    code = f"import sys; sys.argv = [{script!r}, '--help']; from {module} import {function}; {function}()"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def service_dockerfile(service: dict[str, Any]) -> Path:
    build = service["build"]
    context = (ROOT / build["context"]).resolve()
    assert context.is_dir(), f"build context {build['context']} does not exist"
    dockerfile = context / build.get("dockerfile", "Dockerfile")
    assert dockerfile.is_file(), f"{dockerfile} does not exist"
    return dockerfile


def gpu_reservation(service: dict[str, Any]) -> dict[str, Any]:
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    (device,) = devices
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    return dict(device)


def test_compose_services_and_profiles() -> None:
    services = load_compose()["services"]
    assert {"redis", "api", "trainer", "api-replica", "lb"} <= set(services)
    assert "profiles" not in services["redis"] and "profiles" not in services["api"]  # the default stack
    assert services["trainer"]["profiles"] == ["trainer"]
    assert services["api-replica"]["profiles"] == ["scale"] and services["lb"]["profiles"] == ["scale"]


def test_redis_has_healthcheck_and_aof_persistence() -> None:
    compose = load_compose()
    redis = compose["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert "redis-cli" in redis["healthcheck"]["test"] and "ping" in redis["healthcheck"]["test"]
    (mount,) = redis["volumes"]
    volume, _, target = mount.partition(":")
    assert target == "/data" and volume in compose["volumes"]  # a named volume, declared


@pytest.mark.parametrize("name", ["api", "api-replica"])
def test_api_waits_for_redis_reserves_a_gpu_and_checks_ready(name: str) -> None:
    service = load_compose()["services"][name]
    assert service["depends_on"]["redis"]["condition"] == "service_healthy"
    assert service["environment"]["RNNLM_REDIS_URL"].startswith("redis://redis:")
    assert "/ready" in " ".join(service["healthcheck"]["test"])
    assert gpu_reservation(service)["count"] == 1
    assert any(mount.split(":")[:2] == ["./models", "/models"] for mount in service["volumes"])


def test_trainer_writes_into_the_models_directory_the_api_reads() -> None:
    services = load_compose()["services"]
    trainer_mounts = [m.split(":") for m in services["trainer"]["volumes"]]
    assert ["./models", "/models"] in trainer_mounts  # read-write
    assert gpu_reservation(services["trainer"])["count"] == "all"
    entrypoint = exec_form(service_dockerfile(services["trainer"]), "ENTRYPOINT")
    command = exec_form(service_dockerfile(services["trainer"]), "CMD")
    assert entrypoint == ["rnnlm-train"]
    out = command[command.index("--out") + 1]
    assert out.startswith("/models/")


def test_scale_out_profile_balances_the_replicas_through_nginx() -> None:
    services = load_compose()["services"]
    replica, lb = services["api-replica"], services["lb"]
    assert replica["deploy"]["replicas"] >= 2
    assert "ports" not in replica  # only the load balancer is published
    assert lb["depends_on"]["api-replica"]["condition"] == "service_healthy"
    (mount,) = lb["volumes"]
    source, target, _mode = mount.split(":")
    conf = ROOT / source
    assert conf.is_file() and target.startswith("/etc/nginx/")
    text = conf.read_text(encoding="utf-8")
    assert "server api-replica:8000;" in text  # the compose service name and the API's port
    assert "proxy_buffering off;" in text  # SSE tokens must not be held back


def test_bind_mounts_and_build_contexts_exist() -> None:
    compose = load_compose()
    for name, service in compose["services"].items():
        if "build" in service:
            service_dockerfile(service)
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("${"):  # a host path the user chooses (the corpora)
                continue
            if source.startswith("."):
                # ./models is made by `make serve` or the trainer; everything else must be in the repo.
                assert source == "./models" or (ROOT / source).exists(), f"{name}: {source} is missing"
            else:
                assert source in compose["volumes"], f"{name}: volume {source} is not declared"


@pytest.mark.parametrize("dockerfile", sorted((ROOT / "docker").glob("*.Dockerfile")), ids=lambda p: p.name)
def test_dockerfiles_copy_what_exists_and_run_real_entry_points(dockerfile: Path) -> None:
    instructions = dockerfile_instructions(dockerfile)
    assert instructions[0][0] == "FROM" and "cuda" in instructions[0][1]
    for name, arguments in instructions:
        if name == "COPY":
            *sources, _destination = arguments.split()
            for source in sources:
                assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source} does not exist"
    scripts = console_scripts()
    names = [name for name, _ in instructions]
    program = exec_form(dockerfile, "ENTRYPOINT" if "ENTRYPOINT" in names else "CMD")[0]
    assert program in scripts, f"{dockerfile.name} runs {program}, not a console script of pyproject.toml"


def test_api_image_command_uses_flags_the_server_accepts() -> None:
    command = exec_form(ROOT / "docker" / "api.Dockerfile", "CMD")
    assert command[0] == "rnnlm-serve"
    help_text = cli_help("rnnlm-serve")
    for flag in (arg for arg in command if arg.startswith("--")):
        assert flag in help_text, f"rnnlm-serve has no {flag}"
    assert command[command.index("--port") + 1] == "8000"
    assert command[command.index("--models") + 1] == "/models"


def test_trainer_image_command_uses_a_shipped_recipe_and_real_flags() -> None:
    command = exec_form(ROOT / "docker" / "trainer.Dockerfile", "CMD")
    recipe = command[0]
    assert (ROOT / "training" / "recipes" / f"{recipe}.toml").is_file(), f"no recipe {recipe}"
    help_text = cli_help("rnnlm-train")
    for flag in (arg for arg in command if arg.startswith("--")):
        assert flag in help_text, f"rnnlm-train has no {flag}"


def compose_command() -> list[str] | None:
    """`docker compose` (the plugin) or `docker-compose` (the standalone v1), whichever is here."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


@pytest.mark.skipif(compose_command() is None, reason="neither `docker compose` nor `docker-compose` is installed")
def test_docker_compose_config_accepts_the_file() -> None:
    """Compose's own validation (schema, interpolation, profiles); needs no engine."""
    command = compose_command()
    assert command is not None
    for profiles in ([], ["--profile", "trainer"], ["--profile", "scale"]):
        result = subprocess.run([*command, *profiles, "config", "--quiet"], cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
