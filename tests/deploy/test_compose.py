"""docker-compose.yml, the Dockerfiles and the nginx config, read and checked against the repository.

These run everywhere (no engine): every name the files use is checked against what the
repository really has (paths, console scripts, their flags, recipes, services). The
images are built and the stack is run for real by tests/deploy/test_containers.py.
"""

from __future__ import annotations

import json
import re
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
GPU_FILE = ROOT / "docker-compose.gpu.yml"
NGINX_CONF = ROOT / "docker" / "nginx.conf"
API_SERVICES = ("api-1", "api-2")


def load_yaml(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as f:
        data = yaml.safe_load(f)
    assert isinstance(data, dict)
    return data


def load_compose() -> dict[str, Any]:
    return load_yaml(COMPOSE_FILE)


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


def interpolated_default(value: str) -> str:
    """`${VAR:-default}` -> default (what Compose uses when VAR is unset)."""
    match = re.fullmatch(r"\$\{\w+:-([^}]*)\}(.*)", value)
    return match.group(1) + match.group(2) if match else value


def test_services_profiles_and_one_published_port() -> None:
    services = load_compose()["services"]
    assert set(services) == {"redis", *API_SERVICES, "lb", "trainer"}
    assert [name for name, s in services.items() if "profiles" in s] == ["trainer"]
    assert services["trainer"]["profiles"] == ["trainer"]
    published = {name for name, s in services.items() if "ports" in s}
    assert published == {"lb"}  # the replicas are reached only through nginx
    (port,) = services["lb"]["ports"]
    assert interpolated_default(port) == "8000:80"  # the README's tour works through nginx


def test_redis_has_healthcheck_and_aof_persistence() -> None:
    compose = load_compose()
    redis = compose["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--dir") + 1] == "/data"
    assert "redis-cli" in redis["healthcheck"]["test"] and "ping" in redis["healthcheck"]["test"]
    (mount,) = redis["volumes"]
    volume, _, target = mount.partition(":")
    assert target == "/data" and volume in compose["volumes"]  # a named volume, declared


@pytest.mark.parametrize("name", API_SERVICES)
def test_api_replicas_share_redis_and_check_ready(name: str) -> None:
    service = load_compose()["services"][name]
    assert service["depends_on"]["redis"]["condition"] == "service_healthy"
    assert service["environment"]["RNNLM_REDIS_URL"] == "redis://redis:6379/0"
    assert "/ready" in " ".join(service["healthcheck"]["test"])
    assert service["restart"] == "unless-stopped"  # a killed replica comes back
    assert any(interpolated_default(m).split(":")[:2] == ["./models", "/models"] for m in service["volumes"])
    assert "deploy" not in service  # the GPU is in docker-compose.gpu.yml


def test_gpu_override_names_real_services() -> None:
    services = load_compose()["services"]
    for name, service in load_yaml(GPU_FILE)["services"].items():
        assert name in services
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]


def test_trainer_writes_into_the_models_directory_the_api_reads() -> None:
    services = load_compose()["services"]
    trainer_mounts = [interpolated_default(m).split(":") for m in services["trainer"]["volumes"]]
    assert ["./models", "/models"] in trainer_mounts  # read-write
    dockerfile = ROOT / services["trainer"]["build"]["dockerfile"]
    assert exec_form(dockerfile, "ENTRYPOINT") == ["rnnlm-train"]
    command = exec_form(dockerfile, "CMD")
    assert command[command.index("--out") + 1].startswith("/models/")


def nginx_upstreams() -> dict[str, list[str]]:
    """upstream name -> its lines (directives), from docker/nginx.conf."""
    text = NGINX_CONF.read_text(encoding="utf-8")
    blocks = re.findall(r"^upstream (\w+) \{\n(.*?)^\}", text, flags=re.M | re.S)
    return {
        name: [line.strip() for line in body.splitlines() if line.strip() and not line.strip().startswith("#")]
        for name, body in blocks
    }


def test_nginx_balances_every_replica_and_hashes_sessions() -> None:
    upstreams = nginx_upstreams()
    assert set(upstreams) == {"rnnlm_sessions", "rnnlm_api"}
    for lines in upstreams.values():
        servers = [line.split()[1] for line in lines if line.startswith("server ")]
        assert servers == [f"{name}:8000" for name in API_SERVICES]  # the compose services and the API's port
    assert "hash $rnnlm_session consistent;" in upstreams["rnnlm_sessions"]
    assert "least_conn;" in upstreams["rnnlm_api"]
    text = NGINX_CONF.read_text(encoding="utf-8")
    assert "proxy_buffering off;" in text  # SSE tokens must not be held back
    (session_route,) = re.findall(r'location ~ "([^"]+)"', text)
    pattern = re.compile(session_route.replace("?<rnnlm_session>", "?P<rnnlm_session>"))
    session_id = "5f6dd3596559780d6d394fc59300caa8"
    for path in (
        f"/v1/sessions/{session_id}",
        f"/v1/sessions/{session_id}/feed",
        f"/v1/sessions/{session_id}/generate",
    ):
        match = pattern.search(path)
        assert match and match.group("rnnlm_session") == session_id
    for path in ("/v1/sessions", "/v1/sessions/import", "/v1/generate", f"/v1/sessions/{session_id}x"):
        assert not pattern.search(path), path
    lb = load_compose()["services"]["lb"]
    (mount,) = lb["volumes"]
    source, target, _mode = mount.split(":")
    assert (ROOT / source).resolve() == NGINX_CONF and target == "/etc/nginx/conf.d/default.conf"
    assert set(lb["depends_on"]) == set(API_SERVICES)


def test_bind_mounts_and_build_contexts_exist() -> None:
    compose = load_compose()
    for name, service in compose["services"].items():
        if "build" in service:
            assert (ROOT / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
        for mount in service.get("volumes", []):
            source = interpolated_default(mount).split(":")[0]
            if source.startswith("."):
                # ./models is made by `make serve` or the trainer; ../shared/data is the corpora.
                assert source in {"./models", "../shared/data"} or (ROOT / source).exists(), (
                    f"{name}: {source} is missing"
                )
            else:
                assert source in compose["volumes"], f"{name}: volume {source} is not declared"


@pytest.mark.parametrize("name", ["api.Dockerfile", "trainer.Dockerfile"])
def test_dockerfiles_take_the_base_copy_what_exists_and_run_real_entry_points(name: str) -> None:
    dockerfile = ROOT / "docker" / name
    instructions = dockerfile_instructions(dockerfile)
    assert instructions[0][0] == "ARG" and instructions[0][1].startswith("BASE=") and "cuda" in instructions[0][1]
    assert [arguments for keyword, arguments in instructions if keyword == "FROM"][-1] == "${BASE}"
    assert ("USER", "10001") in instructions
    for keyword, arguments in instructions:
        if keyword == "COPY" and not arguments.startswith("--from="):
            *sources, _destination = arguments.split()
            for source in sources:
                assert (ROOT / source).exists(), f"{name}: COPY {source} does not exist"
    names = [keyword for keyword, _ in instructions]
    program = exec_form(dockerfile, "ENTRYPOINT" if "ENTRYPOINT" in names else "CMD")[0]
    assert program in console_scripts(), f"{name} runs {program}, not a console script of pyproject.toml"


def test_api_image_command_and_health_check() -> None:
    dockerfile = ROOT / "docker" / "api.Dockerfile"
    command = exec_form(dockerfile, "CMD")
    assert command[0] == "rnnlm-serve"
    help_text = cli_help("rnnlm-serve")
    for flag in (arg for arg in command if arg.startswith("--")):
        assert flag in help_text, f"rnnlm-serve has no {flag}"
    assert command[command.index("--port") + 1] == "8000"
    assert command[command.index("--models") + 1] == "/models"
    (health,) = [arguments for keyword, arguments in dockerfile_instructions(dockerfile) if keyword == "HEALTHCHECK"]
    assert "http://127.0.0.1:8000/ready" in health


def test_trainer_image_command_uses_a_shipped_recipe_and_real_flags() -> None:
    command = exec_form(ROOT / "docker" / "trainer.Dockerfile", "CMD")
    recipe = command[0]
    assert (ROOT / "training" / "recipes" / f"{recipe}.toml").is_file(), f"no recipe {recipe}"
    help_text = cli_help("rnnlm-train")
    for flag in (arg for arg in command if arg.startswith("--")):
        assert flag in help_text, f"rnnlm-train has no {flag}"


def test_dockerignore_sends_only_what_the_images_copy() -> None:
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()]
    patterns = [line for line in lines if line and not line.startswith("#")]
    assert patterns[0] == "*"
    kept = {pattern[1:] for pattern in patterns if pattern.startswith("!")}
    copied = set()
    for name in ("api.Dockerfile", "trainer.Dockerfile"):
        for keyword, arguments in dockerfile_instructions(ROOT / "docker" / name):
            if keyword == "COPY" and not arguments.startswith("--from="):
                copied.update(arguments.split()[:-1])
    assert kept == copied


def compose_command() -> list[str] | None:
    """podman-compose, `docker compose` (the plugin) or `docker-compose`, whichever is here."""
    beside = Path(sys.executable).with_name("podman-compose")
    if beside.exists():
        return [str(beside)]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


@pytest.mark.skipif(
    compose_command() is None, reason="no podman-compose, `docker compose` or `docker-compose` installed"
)
def test_compose_config_accepts_the_files() -> None:
    """The compose tool's own reading of the files (interpolation, profiles, the GPU override); needs no engine."""
    command = compose_command()
    assert command is not None
    for files in (["-f", "docker-compose.yml"], ["-f", "docker-compose.yml", "-f", "docker-compose.gpu.yml"]):
        for profiles in ([], ["--profile", "trainer"]):
            result = subprocess.run(
                [*command, *files, *profiles, "config"], cwd=ROOT, capture_output=True, text=True, timeout=60
            )
            assert result.returncode == 0, result.stderr
            assert "api-2" in result.stdout
