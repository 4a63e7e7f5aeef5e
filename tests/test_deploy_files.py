"""Static checks of the Dockerfile and docker-compose.yml (no Docker engine runs here)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_dockerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run(
        [str(hadolint), str(ROOT / "Dockerfile")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_one_worker_as_non_root_with_a_healthcheck() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", text, re.M)
    assert re.search(r"^USER (?!root|0\b)\S+", text, re.M), "the image must not run as root"
    assert re.search(r"^HEALTHCHECK .*healthz", text, re.M | re.S)
    assert "torch==2.13.0" in text and "whl/cpu" in text, "CPU torch, pinned like pyproject"
    assert re.search(r'^CMD \["recall", "serve"\]', text, re.M)


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
@pytest.mark.parametrize("profile", [[], ["--profile", "batch"]])
def test_compose_file_is_valid(profile: list[str]) -> None:
    result = subprocess.run(
        ["docker-compose", *profile, "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_compose_runs_redis_api_and_batch_jobs_sharing_snapshots() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    services = dict(re.findall(r"^  (\w+):\n((?:    .*\n|\s*\n)*)", text, re.M))
    assert {"redis", "api", "train", "index"} <= set(services)
    assert "healthcheck:" in services["redis"]
    assert re.search(r"redis:\s*\n\s*condition: service_healthy", services["api"])
    for job in ("train", "index"):
        assert 'profiles: ["batch"]' in services[job]
    assert "snapshots:/app/snapshots" in services["index"]
    assert "snapshots:/app/snapshots" in services["api"]


# --- Kubernetes (deploy/k8s: a kustomize base and overlays) ---------------------------------

K8S = ROOT / "deploy" / "k8s"
K8S_VERSION = "1.30.0"  # the schemas the objects are validated against (kubernetes-validate)
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir())


def load_yaml_docs(path: Path) -> list[dict]:
    import yaml

    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def render(folder: Path) -> list[dict]:
    """The objects ``kubectl kustomize folder`` renders, for the subset of kustomize these
    files use (resources, labels, namespace, images, replicas), so the suite needs no binary;
    ``test_rendering_matches_kubectl_kustomize`` checks it against the real one where there."""
    spec = load_yaml_docs(folder / "kustomization.yaml")[0]
    objects: list[dict] = []
    for resource in spec.get("resources", []):
        path = folder / resource
        objects += render(path) if path.is_dir() else load_yaml_docs(path)
    for entry in spec.get("labels", []):
        for obj in objects:
            obj.setdefault("metadata", {}).setdefault("labels", {}).update(entry["pairs"])
    if "namespace" in spec:
        for obj in objects:
            obj["metadata"]["namespace"] = spec["namespace"]
    for image in spec.get("images", []):
        for obj in objects:
            for container in _containers(obj):
                if container["image"].split(":")[0] == image["name"]:
                    container["image"] = f"{image['newName']}:{image['newTag']}"
    for entry in spec.get("replicas", []):
        for obj in objects:
            if obj["kind"] == "Deployment" and obj["metadata"]["name"] == entry["name"]:
                obj["spec"]["replicas"] = entry["count"]
    return objects


def _containers(obj: dict) -> list[dict]:
    spec = obj.get("spec", {})
    if obj["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return list(spec.get("template", {}).get("spec", {}).get("containers", []))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_is_valid_against_the_kubernetes_schemas(overlay: str) -> None:
    import kubernetes_validate

    objects = render(K8S / "overlays" / overlay)
    kinds = sorted({o["kind"] for o in objects})
    assert kinds == sorted(["ConfigMap", "CronJob", "Deployment", "HorizontalPodAutoscaler",
                            "PersistentVolumeClaim", "PodDisruptionBudget", "Secret",
                            "Service"])  # fmt: skip
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_the_api_deployment_probes_settings_and_volumes(monkeypatch: pytest.MonkeyPatch) -> None:
    rendered = render(K8S / "overlays" / "production")
    objects = {(o["kind"], o["metadata"]["name"]): o for o in rendered}
    api = objects[("Deployment", "recall-api")]
    assert api["spec"]["replicas"] == 3 and api["metadata"]["namespace"] == "recall"
    pod = api["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["command"] == ["recall", "serve"]
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # a snapshot load may take minutes: the startup probe allows ten before liveness applies
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600
    assert container["envFrom"] == [{"configMapRef": {"name": "recall-settings"}}]
    token = {e["name"]: e for e in container["env"]}["RECALL_ADMIN_TOKEN"]
    assert token["valueFrom"]["secretKeyRef"]["name"] == "recall-admin"
    assert pod["securityContext"]["runAsNonRoot"]
    assert pod["terminationGracePeriodSeconds"] > 20  # the service's shutdown grace (20 s)
    from service.settings import load_settings

    for name, value in objects[("ConfigMap", "recall-settings")]["data"].items():
        monkeypatch.setenv(name, value)
    assert load_settings().redis_url is not None  # every setting is one the service takes
    rebuild = objects[("CronJob", "recall-rebuild")]
    [job] = _containers(rebuild)
    assert "--notify" in job["command"] and "build-index" in job["command"]
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
              if "persistentVolumeClaim" in v}  # fmt: skip
    assert claims == {"recall-snapshots"}
    assert objects[("PodDisruptionBudget", "recall-api")]["spec"]["minAvailable"] >= 1
    hpa = objects[("HorizontalPodAutoscaler", "recall-api")]["spec"]
    assert hpa["scaleTargetRef"]["name"] == "recall-api" and hpa["minReplicas"] >= 2


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendering_matches_kubectl_kustomize(overlay: str) -> None:
    import yaml

    result = subprocess.run(["kubectl", "kustomize", str(K8S / "overlays" / overlay)],
                            capture_output=True, text=True, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    theirs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    key = lambda o: (o["kind"], o["metadata"]["name"])  # noqa: E731
    assert sorted(theirs, key=key) == sorted(render(K8S / "overlays" / overlay), key=key)


def test_compose_fleet_profile_runs_two_replicas_behind_haproxy() -> None:
    import yaml

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    fleet = compose["api-fleet"]
    assert fleet["profiles"] == ["fleet"] and fleet["deploy"]["replicas"] == 2
    assert fleet["environment"]["RECALL_REDIS_URL"].startswith("redis://redis")
    lb = compose["lb"]
    assert lb["profiles"] == ["fleet"] and "haproxy" in lb["image"]
    config = (ROOT / "deploy" / "haproxy" / "haproxy.cfg").read_text()
    assert "server-template api 2 api-fleet:8000 check" in config
    assert "option httpchk GET /readyz" in config
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if Path(haproxy).exists():  # haproxy's own check of the file (`make test` installs it)
        config_path = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
        result = subprocess.run([haproxy, "-c", "-f", str(config_path)],
                                capture_output=True, text=True, check=False)  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
