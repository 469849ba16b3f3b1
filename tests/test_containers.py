"""The container recipe: the compose stack's files point at each other and at the repository's monitoring
assets (always checked), Prometheus accepts its configuration (with promtool), and, where a container engine and
the base image can be had, the image builds, runs as non-root and serves an embedding."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from embedserver_testing.server_process import free_port

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "deploy" / "compose"
BASE_IMAGE = "python:3.12-slim-bookworm"


def _mounted(service: dict[str, object], target: str) -> Path:
    """The repository file a compose service mounts at `target`."""
    for volume in service["volumes"]:  # type: ignore[attr-defined]
        source, _, rest = str(volume).partition(":")
        if rest.split(":")[0] == target:
            return (COMPOSE / source).resolve()
    raise AssertionError(f"nothing mounted at {target}")


def test_compose_stack_files_fit_together(tmp_path: Path) -> None:
    stack = yaml.safe_load((COMPOSE / "compose.yaml").read_text())
    services = stack["services"]
    assert set(services) == {"embedserver", "prometheus", "grafana"}
    assert (
        COMPOSE / services["embedserver"]["build"]["context"] / "Dockerfile"
    ).resolve() == ROOT / "Dockerfile"
    prometheus = services["prometheus"]
    config_path = _mounted(prometheus, "/etc/prometheus/prometheus.yml")
    config = yaml.safe_load(config_path.read_text())
    assert config["scrape_configs"][0]["static_configs"][0]["targets"] == ["embedserver:8000"]
    rules_in_container = config["rule_files"][0]
    assert _mounted(prometheus, rules_in_container) == ROOT / "deploy" / "monitoring" / "alerts.yml"
    grafana = services["grafana"]
    provider = yaml.safe_load((COMPOSE / "grafana/provisioning/dashboards/embedserver.yaml").read_text())
    folder = provider["providers"][0]["options"]["path"]
    dashboard = _mounted(grafana, f"{folder}/embedserver.json")
    assert dashboard == ROOT / "deploy" / "monitoring" / "grafana-dashboard.json"
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    # Prometheus's own check, with the rule file where the container would have it.
    config["rule_files"] = [str(ROOT / "deploy" / "monitoring" / "alerts.yml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    done = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _docker_ready() -> str | None:
    """Why the image cannot be built here, or None when it can."""
    if shutil.which("docker") is None:
        return "no docker command (Debian: apt-get install docker.io)"
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        return "the docker command is here but no daemon answers"
    if subprocess.run(["docker", "image", "inspect", BASE_IMAGE], capture_output=True).returncode != 0:
        pulled = subprocess.run(["docker", "pull", BASE_IMAGE], capture_output=True, timeout=300)
        if pulled.returncode != 0:
            return f"the base image {BASE_IMAGE} is not here and cannot be pulled"
    return None


@pytest.mark.slow
def test_the_image_builds_runs_as_non_root_and_serves() -> None:
    reason = _docker_ready()
    if reason is not None:
        pytest.skip(f"container test skipped: {reason}")
    tag = "embedserver-test:ci"
    subprocess.run(
        ["docker", "build", "-t", tag, "--build-arg", "BACKEND=cpu", str(ROOT)], check=True, timeout=1800
    )
    port = free_port()
    container = subprocess.run(
        ["docker", "run", "-d", "--rm", "-e", "HF_HUB_OFFLINE=1", "-p", f"127.0.0.1:{port}:8000", tag],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the container never became ready"
            time.sleep(1)
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/embeddings", json={"input": "hello"}).json()
        assert len(answer["data"][0]["embedding"]) == 384  # the offline fallback model
        user = subprocess.run(
            ["docker", "exec", container, "id", "-u"], capture_output=True, text=True
        ).stdout
        assert user.strip() == "10001"
    finally:
        subprocess.run(["docker", "stop", container], capture_output=True)
