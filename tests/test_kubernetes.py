"""deploy/kubernetes as kubectl builds it, validated against the Kubernetes API schemas offline.

``kubectl kustomize deploy/kubernetes`` renders the kustomization (component, ConfigMap
generator, image override) exactly as ``kubectl apply -k`` would send it; every rendered object
of a built-in kind, the example Secret, and the proxy-side example (its ConfigMap, and its
Deployment fragment applied as a strategic-merge patch to a minimal proxy Deployment, as its
comment says to use it) must pass the strict OpenAPI schemas of the oldest and newest Kubernetes
versions that ``kubernetes-validate`` ships (no unknown field, right types, required fields).

Not done: ``kubectl apply --dry-run=client`` needs an API server even in client mode (it reads
the server's discovery and OpenAPI documents: "failed to download openapi: Get
http://localhost:8080/openapi/v2 ... connection refused"), and no cluster runs on the CI
machines. The prometheus-operator objects (PodMonitor, PrometheusRule) are custom resources
whose schemas are not shipped; tests/test_deploy.py checks their content.

kubectl comes with the machine image here (``which kubectl``); without it the tests are
skipped, and fail instead with ``LSM_REQUIRE_KUBECTL=1`` (CI).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "PodMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}
SCHEMA_DIR = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
VERSIONS = sorted(
    {p.name[1:].split("-")[0] for p in SCHEMA_DIR.glob("v*-local-strict")},
    key=lambda v: tuple(int(x) for x in v.split(".")),
)
OLDEST_AND_NEWEST = sorted({VERSIONS[0], VERSIONS[-1]})


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        if os.environ.get("LSM_REQUIRE_KUBECTL") == "1":
            pytest.fail("LSM_REQUIRE_KUBECTL=1, but kubectl is not installed")
        pytest.skip("kubectl is not installed")
    return path


def kustomize(directory: Path) -> list[dict[str, Any]]:
    r = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"kubectl kustomize {directory} failed:\n{r.stderr}"
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def validate(obj: dict[str, Any]) -> None:
    for version in OLDEST_AND_NEWEST:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} is not valid for Kubernetes {version}:\n{exc}")


def test_schemas_cover_old_and_new_versions() -> None:
    assert len(OLDEST_AND_NEWEST) == 2, VERSIONS


def test_kustomization_renders_and_validates() -> None:
    objects = kustomize(K8S)
    kinds = {(o["apiVersion"], o["kind"]) for o in objects}
    assert kinds == {
        ("v1", "ConfigMap"),
        ("v1", "Service"),
        ("apps/v1", "Deployment"),
        ("policy/v1", "PodDisruptionBudget"),
        *CUSTOM_KINDS,
    }
    for obj in objects:
        if (obj["apiVersion"], obj["kind"]) not in CUSTOM_KINDS:
            validate(obj)

    # What kustomize did: the generated ConfigMap's hashed name is the one the pods mount, and
    # the image is the kustomization's name and tag.
    by_kind = {o["kind"]: o for o in objects}
    config_map = by_kind["ConfigMap"]["metadata"]["name"]
    assert config_map.startswith("litellm-stream-metrics-litellm-config-")
    pod = by_kind["Deployment"]["spec"]["template"]["spec"]
    assert config_map in [v.get("configMap", {}).get("name") for v in pod["volumes"]]
    (image,) = yaml.safe_load((K8S / "kustomization.yaml").read_text())["images"]
    (container,) = pod["containers"]
    assert container["image"] == f"{image['newName']}:{image['newTag']}"


def test_secret_example_validates() -> None:
    for obj in yaml.safe_load_all((K8S / "secret.example.yaml").read_text()):
        if obj:
            validate(obj)


def test_proxy_example_applies_as_a_patch(tmp_path: Path) -> None:
    docs = [d for d in yaml.safe_load_all((K8S / "litellm-proxy.example.yaml").read_text()) if d]
    (config_map,) = [d for d in docs if d["kind"] == "ConfigMap"]
    (patch,) = [d for d in docs if d["kind"] == "Deployment"]
    validate(config_map)

    labels = {"app": "litellm-proxy"}
    container = patch["spec"]["template"]["spec"]["containers"][0]["name"]
    proxy = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": patch["metadata"]["name"]},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": container, "image": "litellm:placeholder"}]},
            },
        },
    }
    (tmp_path / "proxy.yaml").write_text(yaml.safe_dump(proxy))
    (tmp_path / "patch.yaml").write_text(yaml.safe_dump(patch))
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump({"resources": ["proxy.yaml"], "patches": [{"path": "patch.yaml"}]})
    )
    (patched,) = kustomize(tmp_path)
    validate(patched)
    (merged,) = patched["spec"]["template"]["spec"]["containers"]
    assert merged["image"] == "litellm:placeholder"  # merged into the existing container
    assert {"LSM_REDIS_URL", "LSM_NAMESPACE", "LSM_SHUTDOWN_TIMEOUT"} <= {e["name"] for e in merged["env"]}
