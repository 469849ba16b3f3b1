"""deploy/kubernetes: every manifest valid against the Kubernetes API schemas (1.33, strict), and both overlays
rendered by kustomize into what a GPU or CPU deployment needs, with probes and grace matching the server."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from embedserver.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "kubernetes"
VERSION = "1.33.0"


def _validate(document: dict[str, Any]) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(document, VERSION, strict=True)  # raises on any error


def test_every_base_manifest_is_valid() -> None:
    for path in sorted((DEPLOY / "base").glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for document in yaml.safe_load_all(path.read_text()):
            _validate(document)


def _kustomize() -> str:
    found = shutil.which("kustomize") or shutil.which("kustomize", path=str(ROOT / ".venv" / "bin"))
    if found is None:
        pytest.skip("kustomize is not installed (scripts/get-kustomize.sh puts it in .venv/bin)")
    return found


@pytest.mark.parametrize("overlay", ["cpu", "nvidia"])
def test_overlays_render_to_valid_manifests(overlay: str) -> None:
    rendered = subprocess.run(
        [_kustomize(), "build", str(DEPLOY / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    documents = {doc["kind"]: doc for doc in yaml.safe_load_all(rendered)}
    assert set(documents) == {
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "PersistentVolumeClaim",
        "HorizontalPodAutoscaler",
    }
    for document in documents.values():
        _validate(document)
    pod = documents["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {item["name"]: item["value"] for item in container["env"]}
    # Every setting named exists, and has a valid value.
    Settings(**{name.lower(): value for name, value in env.items() if name.lower() in Settings.model_fields})
    assert set(env) - {"HF_HOME", "HF_HUB_OFFLINE"} <= {name.upper() for name in Settings.model_fields}
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300  # model load and warm-up
    # The pod outlives the server's own bound on a shutdown: drain delay + grace + 5 s.
    bound = float(env["DRAIN_DELAY_S"]) + float(env["SHUTDOWN_GRACE_S"]) + 5
    assert pod["terminationGracePeriodSeconds"] > bound
    assert container["volumeMounts"][0]["mountPath"] == env["HF_HOME"]
    # With a read-only root filesystem a writable temporary directory where Python and MLX look for one (TMPDIR,
    # else /tmp): MLX keeps its compiled kernels there. An emptyDir, mounted writable.
    if container["securityContext"].get("readOnlyRootFilesystem"):
        temporary = env.get("TMPDIR", "/tmp")
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert temporary in mounts, f"nothing writable at {temporary} on a read-only root filesystem"
        assert not mounts[temporary].get("readOnly", False)
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in volumes[mounts[temporary]["name"]]
    gpus = container["resources"]["limits"].get("nvidia.com/gpu")
    assert gpus == ("1" if overlay == "nvidia" else None)
    selector = documents["Service"]["spec"]["selector"]
    assert selector.items() <= documents["Deployment"]["spec"]["template"]["metadata"]["labels"].items()
    hpa = documents["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == documents["Deployment"]["metadata"]["name"]
    assert hpa["metrics"][0]["pods"]["metric"]["name"] == "embedserver_queue_depth"
