"""What can be checked of the cluster path without a cluster: manifests against the Kubernetes schemas,
kustomize builds, the kind config, the Dockerfile lint, and the commands the Makefile would run."""

import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
KUBERNETES_VERSION = "1.32.0"  # the version of the kubectl here; KFP 2.17 supports it


def _kustomize(folder: str) -> list[dict]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (with kustomize) is needed for this test"
    built = subprocess.run([kubectl, "kustomize", str(ROOT / folder)], check=True, capture_output=True, text=True)
    return list(yaml.safe_load_all(built.stdout))


@pytest.mark.parametrize("overlay", ["k8s/overlays/kind", "k8s/overlays/gke"])
def test_overlays_build_and_validate_against_the_kubernetes_schemas(overlay):
    resources = _kustomize(overlay)
    assert {(r["kind"], r["metadata"]["name"]) for r in resources} == {
        ("ConfigMap", "kfp-launcher"), ("PersistentVolumeClaim", "cxr-checkpoints")}
    for resource in resources:
        assert resource["metadata"]["namespace"] == "kubeflow"
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


def test_every_plain_manifest_validates():
    manifests = [p for p in (ROOT / "k8s").rglob("*.yaml") if p.name != "kustomization.yaml"]
    assert manifests
    for path in manifests:
        for resource in yaml.safe_load_all(path.read_text()):
            kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


def test_a_broken_manifest_is_caught():
    bad = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "x"},
           "spec": {"accessModes": "ReadWriteOnce"}}  # a string where a list belongs
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


def test_pipeline_root_points_at_the_clusters_object_store():
    roots = {overlay: next(r for r in _kustomize(f"k8s/overlays/{overlay}") if r["kind"] == "ConfigMap")
             ["data"]["defaultPipelineRoot"] for overlay in ("kind", "gke")}
    assert roots["kind"].startswith("minio://") and roots["gke"].startswith("gs://")


def test_kind_config_gives_a_gpu_worker_the_label_and_taint_the_pipeline_selects():
    from cxr import settings

    text = (ROOT / "k8s/kind/cluster.yaml.tmpl").read_text()
    config = yaml.safe_load(text)  # nvkind's template has no template actions left to expand
    workers = [n for n in config["nodes"] if n["role"] == "worker"]
    gpu = [n for n in workers if "extraMounts" in n]
    assert len(gpu) == 1 and len(workers) == 2
    key, _, value = settings.GPU_NODE_SELECTOR.partition("=")
    assert gpu[0]["labels"] == {key: value}
    assert gpu[0]["extraMounts"] == [{"hostPath": "/dev/null",
                                      "containerPath": "/var/run/nvidia-container-devices/all"}]
    join = yaml.safe_load(gpu[0]["kubeadmConfigPatches"][0])
    assert join["nodeRegistration"]["taints"] == [
        {"key": settings.GPU_TOLERATION_KEY, "value": "present", "effect": "NoSchedule"}]


def test_dockerfile_lints_clean():
    hadolint = Path(sys.executable).with_name("hadolint")
    result = subprocess.run([str(hadolint), str(ROOT / "docker/Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_make_prints_the_real_cluster_commands():
    dry = subprocess.run(["make", "-n", "cluster", "deploy", "load", "run", "KFP_HOST=http://kfp.example:80",
                          "RUN_ARGS=source=gs://b/raw epochs=3"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    for expected in [
        "nvkind cluster create --name cxr --config-template k8s/kind/cluster.yaml.tmpl",
        "helm upgrade -i nvidia-device-plugin nvdp/nvidia-device-plugin --version 0.17.1",
        'kubectl apply -k "github.com/kubeflow/pipelines/manifests/kustomize/cluster-scoped-resources?ref=2.17.0"',
        "kubectl wait --for condition=established --timeout=120s crd/applications.app.k8s.io",
        'kubectl apply -k "github.com/kubeflow/pipelines/manifests/kustomize/env/platform-agnostic?ref=2.17.0"',
        "kubectl apply -k k8s/overlays/kind",
        "cxr kaggle-secret --namespace kubeflow",
        "kind load docker-image localhost/cxr-bench:0.1.0-gpu --name cxr",
        "cxr submit --host http://kfp.example:80",
        "--arg source=gs://b/raw --arg epochs=3",
    ]:
        assert expected in dry, expected
