"""deploy/: what can be checked without Docker, Kubernetes or a booted systemd.

The configs load with ingester.config; the Dockerfile's shape is checked and its HEALTHCHECK command is
run against a real health server; the unit goes through `systemd-analyze verify` and `security`; the
YAML goes through maintained validators (kubernetes-validate, check-jsonschema's compose-spec) when they
are installed, and through structural checks that tie ports, probes and secrets together.
"""

from __future__ import annotations

import asyncio
import configparser
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from ingester.config import Config, load, parse_duration
from ingester.health import HealthServer

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
PLACEHOLDER_ENV = {"SLACK_WEBHOOK_URL": "https://hooks.slack.example/services/T/B/X"}


def yaml_docs(path: Path) -> list[dict[str, Any]]:
    if importlib.util.find_spec("yaml") is None:
        pytest.skip("PyYAML is not installed (add pyyaml to the test extras)")
    import yaml

    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def env_names(toml_text: str) -> set[str]:
    """The environment variables a config reads (`key = "env:NAME"`)."""
    return set(re.findall(r'=\s*"env:([A-Za-z_][A-Za-z0-9_]*)"', toml_text))


@pytest.fixture
def secrets_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in PLACEHOLDER_ENV.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def production(secrets_env: None) -> Config:
    return load(DEPLOY / "ingester.toml")


# --- configs ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", sorted(DEPLOY.rglob("*.toml")), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_config_file_in_deploy_loads(path: Path, secrets_env: None) -> None:
    assert env_names(path.read_text()) <= set(PLACEHOLDER_ENV)  # every secret it reads is known here
    load(path)


def test_production_config_keeps_secrets_out_and_serves_probes(production: Config) -> None:
    text = (DEPLOY / "ingester.toml").read_text()
    assert "hooks.slack.com/services/" not in text
    assert env_names(text) == {"SLACK_WEBHOOK_URL"}
    assert production.server.port == 9180 and production.server.host == "0.0.0.0"
    webhook = PLACEHOLDER_ENV["SLACK_WEBHOOK_URL"]
    assert production.notifiers
    assert all(n.webhook_url.get_secret_value() == webhook for n in production.notifiers)


# --- Dockerfile ------------------------------------------------------------------------------------------

def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    result, pending = [], ""
    for line in path.read_text().splitlines():
        if not pending and line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        pending += line
        if pending.strip():
            word, _, rest = pending.strip().partition(" ")
            result.append((word.upper(), " ".join(rest.split())))
        pending = ""
    return result


def final_stage(steps: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def docker_env(steps: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, args in steps:
        if word == "ENV":
            for item in shlex.split(args):
                name, _, value = item.partition("=")
                env[name] = value
    return env


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return instructions(DEPLOY / "Dockerfile")


def test_dockerfile_is_slim_non_root_and_exec_form(dockerfile: list[tuple[str, str]]) -> None:
    assert all(args.split()[0] == "python:3.11-slim" for word, args in dockerfile if word == "FROM")
    final = final_stage(dockerfile)
    users = [args for word, args in final if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    by_word = {word: args for word, args in final}
    assert json.loads(by_word["ENTRYPOINT"]) == ["ingester"]  # exec form: PID 1 is the daemon
    assert json.loads(by_word["CMD"]) == ["run", "--config", "/etc/ingester/ingester.toml"]
    assert by_word["STOPSIGNAL"] == "SIGTERM"
    assert not any(word == "RUN" and "curl" in args for word, args in dockerfile)


def test_dockerfile_copies_only_what_exists_and_is_not_ignored(dockerfile: list[tuple[str, str]]) -> None:
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    admitted = [line[1:].rstrip("/") for line in ignore if line.startswith("!")]
    assert "**" in ignore  # everything else stays out of the build context
    for word, args in dockerfile:
        if word != "COPY" or args.startswith("--from"):
            continue
        *sources, _dest = args.split()
        for source in sources:
            assert (ROOT / source).exists(), source
            assert any(source == a or source.startswith(a + "/") for a in admitted), source


async def run_healthcheck(command: list[str], url: str) -> int:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *command[1:], env={"INGESTER_HEALTH_URL": url},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    return await asyncio.wait_for(proc.wait(), 60)


async def test_dockerfile_healthcheck_follows_healthz(dockerfile: list[tuple[str, str]], production: Config,
                                                      redis: aioredis.Redis) -> None:
    final = final_stage(dockerfile)
    (check,) = [args for word, args in final if word == "HEALTHCHECK"]
    command = json.loads(check.split(" CMD ", 1)[1])  # exec form: no shell needed in the image
    assert command[0] == "python"
    url = docker_env(final)["INGESTER_HEALTH_URL"]
    assert url == f"http://127.0.0.1:{production.server.port}/healthz"

    now = [0.0]
    health = HealthServer(redis, "127.0.0.1", 0, stale_after=30, clock=lambda: now[0])
    await health.start()
    try:
        local = f"http://127.0.0.1:{health.port}/healthz"
        assert await run_healthcheck(command, local) == 0
        now[0] += 60  # the scheduler stopped ticking: 503
        assert await run_healthcheck(command, local) != 0
    finally:
        await health.stop()


# --- compose ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    (doc,) = yaml_docs(DEPLOY / "compose.yaml")
    return dict(doc)


def flags(command: list[str]) -> dict[str, str]:
    return {command[i]: command[i + 1] for i in range(1, len(command) - 1) if command[i].startswith("--")}


def test_compose_redis_is_durable_and_never_evicts(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    assert redis["image"].split(":")[1].startswith("7")
    options = flags(redis["command"])
    assert options["--appendonly"] == "yes"
    assert options["--appendfsync"] == "everysec"
    assert options["--maxmemory-policy"] == "noeviction"
    assert any(volume.endswith(":/data") for volume in redis["volumes"])
    assert redis["volumes"][0].split(":")[0] in compose["volumes"]
    assert "redis-cli" in redis["healthcheck"]["test"]


def test_compose_ingester_waits_for_redis_and_stops_gracefully(compose: dict[str, Any],
                                                               production: Config) -> None:
    ingester = compose["services"]["ingester"]
    assert ingester["depends_on"]["redis"]["condition"] == "service_healthy"
    assert ingester["environment"]["INGESTER_REDIS_URL"].startswith("redis://redis:")
    assert parse_duration(ingester["stop_grace_period"]) > production.server.shutdown_grace
    build = ingester["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    for volume in ingester["volumes"]:
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            assert (DEPLOY / source).exists() and target == "/etc/ingester/ingester.toml"
    for name in env_names((DEPLOY / "ingester.toml").read_text()):
        assert name in ingester["environment"], f"{name} is read by the config but not passed"


def test_compose_matches_the_compose_spec() -> None:
    if importlib.util.find_spec("check_jsonschema") is None:
        pytest.skip("check-jsonschema is not installed (add it to the test extras)")
    result = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema",
                             "vendor.compose-spec", str(DEPLOY / "compose.yaml")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


# --- Kubernetes ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def manifests() -> dict[str, dict[str, Any]]:
    """kind -> resource, from every manifest the kustomization lists."""
    (kustomization,) = yaml_docs(K8S / "kustomization.yaml")
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    return {doc["kind"]: doc for name in sorted(listed) for doc in yaml_docs(K8S / name)}


def test_k8s_manifests_match_the_kubernetes_schemas(manifests: dict[str, dict[str, Any]]) -> None:
    if importlib.util.find_spec("kubernetes_validate") is None:
        pytest.skip("kubernetes-validate is not installed (add it to the test extras)")
    import kubernetes_validate

    version = kubernetes_validate.latest_version()
    for resource in manifests.values():
        kubernetes_validate.validate(resource, version, strict=True)
    broken = json.loads(json.dumps(manifests["Deployment"]))  # the validator does catch a typo
    broken["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)


def container(manifests: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (only,) = manifests["Deployment"]["spec"]["template"]["spec"]["containers"]
    return dict(only)


@pytest.fixture(scope="module")
def k8s_config(manifests: dict[str, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> Config:
    path = tmp_path_factory.mktemp("k8s") / "ingester.toml"
    path.write_text(manifests["ConfigMap"]["data"]["ingester.toml"])
    secret = manifests["Secret"]["stringData"]
    with pytest.MonkeyPatch.context() as mp:
        for name in env_names(path.read_text()):
            assert name in secret, f"{name} is read by the ConfigMap's TOML but not in the Secret"
            mp.setenv(name, secret[name])
        return load(path)


def test_k8s_probes_hit_the_configured_port(manifests: dict[str, dict[str, Any]], k8s_config: Config) -> None:
    main = container(manifests)
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert k8s_config.server.host == "0.0.0.0"
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"),
                        ("startupProbe", "/healthz")):
        get = main[probe]["httpGet"]
        assert get["path"] == path
        assert ports.get(get["port"], get["port"]) == k8s_config.server.port
    service_port = manifests["Service"]["spec"]["ports"][0]["targetPort"]
    assert ports[service_port] == k8s_config.server.port


def test_k8s_deployment_terminates_gracefully_with_config_and_secrets(
        manifests: dict[str, dict[str, Any]], k8s_config: Config) -> None:
    pod = manifests["Deployment"]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= 30 > k8s_config.server.shutdown_grace
    main = container(manifests)
    assert main["args"][-1] == "/etc/ingester/ingester.toml"
    mounts = {m["name"]: m["mountPath"] for m in main["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == manifests["ConfigMap"]["metadata"]["name"]
    assert mounts["config"] == "/etc/ingester"
    assert main["envFrom"][0]["secretRef"]["name"] == manifests["Secret"]["metadata"]["name"]
    assert {"requests", "limits"} <= set(main["resources"])
    assert pod["securityContext"]["runAsNonRoot"] and main["securityContext"]["readOnlyRootFilesystem"]
    assert k8s_config.articles.workers is not None  # not the node's CPU count inside a CPU limit


# --- systemd ---------------------------------------------------------------------------------------------

def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(DEPLOY / "ingester.service")
    return parser


def test_unit_is_notify_with_watchdog_and_graceful_stop(production: Config) -> None:
    service = unit()["Service"]
    assert (service["Type"], service["NotifyAccess"]) == ("notify", "main")
    assert parse_duration(service["WatchdogSec"]) > 0
    assert parse_duration(service["TimeoutStopSec"]) > production.server.shutdown_grace
    assert service["ExecStart"].split() == ["/opt/ingester/.venv/bin/ingester", "run", "--config",
                                           "/etc/ingester/ingester.toml"]
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["Restart"] == "on-failure"
    assert service["ProtectSystem"] == "strict" and service["NoNewPrivileges"] == "yes"


def verifiable_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at a stub: verify checks that the binary exists, and the
    venv is not installed at /opt/ingester on this machine."""
    stub = tmp_path / "ingester"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    copy = tmp_path / "ingester.service"
    copy.write_text((DEPLOY / "ingester.service").read_text()
                    .replace("/opt/ingester/.venv/bin/ingester", str(stub)))
    return copy


def systemd_analyze() -> str:
    binary = shutil.which("systemd-analyze")
    if binary is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    return binary


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    result = subprocess.run([systemd_analyze(), "verify", "--man=no", str(verifiable_copy(tmp_path))],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr  # warnings count too


def test_unit_exposure_stays_low(tmp_path: Path) -> None:
    """`systemd-analyze security` scores exposure 0-10 (shown) / 0-100 (threshold): keep it OK (< 2)."""
    result = subprocess.run([systemd_analyze(), "security", "--offline=yes", "--threshold=20", "--no-pager",
                             str(verifiable_copy(tmp_path))],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
