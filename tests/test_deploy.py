"""What can be checked of the cluster path without a cluster: manifests against the Kubernetes schemas,
kustomize builds, the kind config, the Dockerfile lint, and the commands the Makefile would run."""

import os
import re
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
    # KServe's InferenceService is a custom resource, not in the Kubernetes schemas: tests/test_export.py checks it.
    manifests = [p for p in (ROOT / "k8s").rglob("*.yaml")
                 if p.name != "kustomization.yaml" and p.parent.name != "serving"]
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


@pytest.mark.parametrize("dockerfile", ["docker/Dockerfile", "docker/Dockerfile.weights"])
def test_dockerfile_lints_clean(dockerfile):
    hadolint = Path(sys.executable).with_name("hadolint")
    result = subprocess.run([str(hadolint), str(ROOT / dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _dry(*arguments: str) -> subprocess.CompletedProcess:
    """`make -n`, its recipe lines joined and spaces collapsed in stdout."""
    dry = subprocess.run(["make", "-n", *arguments], cwd=ROOT, capture_output=True, text=True)
    dry.stdout = " ".join(dry.stdout.replace("\\\n", " ").split())
    return dry


def test_make_push_tags_and_pushes_both_variants_then_compile_uses_them():
    dry = _dry("push", "compile", "REGISTRY=europe-west4-docker.pkg.dev/proj/repo", "CONTAINER=podman")
    assert dry.returncode == 0, dry.stderr
    pushed = "europe-west4-docker.pkg.dev/proj/repo/cxr-bench:0.1.0-$variant"
    assert "for variant in gpu cpu; do" in dry.stdout
    assert f"podman tag localhost/cxr-bench:0.1.0-$variant {pushed} && podman push {pushed} || exit 1;" in dry.stdout
    assert "CXR_IMAGE=europe-west4-docker.pkg.dev/proj/repo/cxr-bench:0.1.0-gpu" in dry.stdout
    # Without REGISTRY nothing changes: the local tag.
    assert "CXR_IMAGE=localhost/cxr-bench:0.1.0-gpu" in _dry("compile").stdout


def test_make_push_without_a_registry_stops_before_anything_runs():
    dry = _dry("push", "CONTAINER=docker")
    assert dry.returncode == 2 and "docker" not in dry.stdout
    assert "REGISTRY must name the registry to push to" in dry.stderr


def test_make_images_with_weights_bakes_them_into_both_variants(tmp_path):
    dry = _dry("images", f"WEIGHTS={tmp_path}", "CONTAINER=docker")
    assert dry.returncode == 0, dry.stderr
    base = "docker build -f docker/Dockerfile"
    baked = ("docker build -f docker/Dockerfile.weights --build-arg IMAGE=localhost/cxr-bench:0.1.0-$variant "
             f"-t localhost/cxr-bench:0.1.0-$variant {tmp_path} || exit 1;")
    assert base in dry.stdout and baked in dry.stdout
    assert dry.stdout.index(base) < dry.stdout.index(baked) < dry.stdout.index("done")
    assert "Dockerfile.weights" not in _dry("images", "CONTAINER=docker").stdout


def test_make_images_with_weights_that_are_not_a_folder_stops(tmp_path):
    dry = _dry("images", f"WEIGHTS={tmp_path}/nope", "CONTAINER=docker")
    assert dry.returncode == 2 and "docker build" not in dry.stdout
    assert f"WEIGHTS={tmp_path}/nope is not a folder; make weights DIR={tmp_path}/nope downloads" in dry.stderr


def test_make_weights_downloads_into_dir():
    assert "-m cxr.training.weights --out /data/imagenet" in _dry("weights", "DIR=/data/imagenet").stdout
    dry = _dry("weights")
    assert dry.returncode == 2 and "cxr.training.weights" not in dry.stdout
    assert "DIR must name the folder to download the pretrained weights into" in dry.stderr


def test_make_prints_the_real_cluster_commands():
    dry = subprocess.run(["make", "-n", "cluster", "deploy", "load", "run", "KFP_HOST=http://kfp.example:80",
                          "CONTAINER=docker",
                          "RUN_ARGS=source=gs://b/raw epochs=3"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    flat = " ".join(dry.replace("\\\n", " ").split())  # recipe lines joined, spaces collapsed
    for expected in [
        "k8s/kind/create-cluster.sh cxr k8s/kind/cluster.yaml.tmpl nvidia.com/gpu.present=true",
        "helm upgrade -i nvidia-device-plugin nvdp/nvidia-device-plugin --version 0.20.0",
        "--namespace nvidia --create-namespace --reset-values --wait",  # GPU_SHARING=1: no time-slicing values
        'kubectl apply -k "github.com/kubeflow/pipelines/manifests/kustomize/cluster-scoped-resources?ref=2.17.0"',
        "kubectl wait --for condition=established --timeout=120s crd/applications.app.k8s.io",
        'kubectl apply -k "github.com/kubeflow/pipelines/manifests/kustomize/env/platform-agnostic?ref=2.17.0"',
        "kubectl apply -k k8s/overlays/kind",
        "cxr kaggle-secret --namespace kubeflow",
        "cxr cluster-ready --namespace kubeflow --image localhost/cxr-bench:0.1.0-gpu",
        'docker save -o "$archive" localhost/cxr-bench:0.1.0-gpu',
        'kind load image-archive "$archive" --name cxr',
        '--nodes "$(kind get nodes --name cxr | grep -v -- -control-plane | paste -sd, -)"',
        "cxr submit --host http://kfp.example:80",
        "--arg source=gs://b/raw --arg epochs=3",
    ]:
        assert expected in flat, expected
    assert "kind load docker-image" not in dry  # fails on Docker's containerd image store (kind#3795)


def _dry_deploy(*variables: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-n", "deploy", *variables], cwd=ROOT, capture_output=True, text=True)


def test_gpu_sharing_passes_time_slicing_values_to_the_device_plugin_chart():
    dry = _dry_deploy("GPU_SHARING=5")
    assert dry.returncode == 0, dry.stderr
    helm = " ".join(dry.stdout.split("helm upgrade -i nvidia-device-plugin", 1)[1].split("\\\n"))
    values = re.search(r"--values (<\(sed [^)]*\))", helm)
    assert values, helm
    # The process substitution exactly as make hands it to bash, run from the repository root.
    rendered = subprocess.run(["bash", "-c", f"cat {values[1]}"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout
    chart_values = yaml.safe_load(rendered)
    assert chart_values["config"]["default"] == "time-slicing"
    config = yaml.safe_load(chart_values["config"]["map"]["time-slicing"])
    assert config == {"version": "v1", "sharing": {"timeSlicing": {"resources": [
        {"name": "nvidia.com/gpu", "replicas": 5}]}}}


@pytest.mark.parametrize("value", ["0", "two", "01", "-3"])
def test_a_bad_gpu_sharing_stops_make_deploy_before_anything_runs(value):
    dry = _dry_deploy(f"GPU_SHARING={value}")
    assert dry.returncode == 2 and "helm" not in dry.stdout
    assert f"GPU_SHARING must be a whole number >= 1 (train tasks per GPU), got '{value}'" in dry.stderr


def test_kind_script_parses_and_passes_shellcheck():
    script = ROOT / "k8s/kind/create-cluster.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    shellcheck = Path(sys.executable).with_name("shellcheck")
    result = subprocess.run([str(shellcheck), str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


FAKE_TOOLS = {
    # nvkind: creates the cluster (FAKE_CREATES=1) and exits FAKE_NVKIND_RC, like its benign umount errors.
    "nvkind": '[[ ${FAKE_CREATES:-1} == 1 ]] && touch "$STATE/cluster"; exit "${FAKE_NVKIND_RC:-0}"',
    "kind": """case "$1 $2" in
  "get clusters") [[ -e $STATE/cluster ]] && echo cxr;;
  "get nodes") printf '%s\\n' cxr-control-plane cxr-worker2 cxr-worker;;
  "load image-archive") [[ -s $3 ]] && echo "archive $3 held $(cat "$3")" >> "$LOG";;
esac
exit 0""",
    "kubectl": 'case "$*" in *"get nodes -l"*) printf cxr-worker;; esac',
    # docker exec into the node: nvidia-ctk present unless FAKE_NO_CTK; containerd's default follows nvidia-ctk.
    "docker": """case "$*" in
  "save -o "*) echo "image $4" > "$3";;
  *"command -v nvidia-ctk"*) [[ -z ${FAKE_NO_CTK:-} ]];;
  *"nvidia-ctk runtime configure"*--set-as-default*) touch "$STATE/default";;
  *"containerd config dump"*) [[ -e $STATE/default ]] && echo "default_runtime_name = 'nvidia'" \\
                                || echo "default_runtime_name = 'runc'";;
esac""",
}


def _make_cluster(tmp_path: Path, target: str = "cluster", **env: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """`make cluster` (or `target`) for real, with nvkind, kind, kubectl and docker replaced by scripts that log
    their arguments: they need a Docker engine and a GPU, which this machine lacks. What is tested is our own
    logic: what it tolerates, what it runs in the GPU node, and when it stops."""
    bin_dir, state = tmp_path / "bin", tmp_path / "state"
    bin_dir.mkdir()
    state.mkdir()
    log = tmp_path / "calls.log"
    for name, body in FAKE_TOOLS.items():
        (bin_dir / name).write_text(f'#!/usr/bin/env bash\necho "{name} $*" >> "$LOG"\n{body}\n')
        (bin_dir / name).chmod(0o755)
    if env.pop("EXISTS", None):
        (state / "cluster").touch()
    environment = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "STATE": str(state), "LOG": str(log),
                   **env}
    result = subprocess.run(["make", target, "CONTAINER=docker"], cwd=ROOT, capture_output=True, text=True,
                            env=environment)
    return result, log.read_text().splitlines() if log.exists() else []


def test_make_cluster_makes_the_nvidia_runtime_containerds_default_after_nvkinds_benign_failure(tmp_path):
    result, calls = _make_cluster(tmp_path, FAKE_NVKIND_RC="1")
    assert result.returncode == 0, result.stderr
    assert "nvkind exited non-zero but the cluster exists" in result.stderr
    assert calls[1] == "nvkind cluster create --name cxr --config-template k8s/kind/cluster.yaml.tmpl"
    assert ("docker exec cxr-worker nvidia-ctk runtime configure --runtime=containerd --set-as-default "
            "--config-source=file") in calls
    assert "docker exec cxr-worker systemctl restart containerd" in calls
    wait = "kubectl --context kind-cxr wait --for=condition=Ready nodes --all --timeout=300s"
    assert calls.count(wait) == 2  # after nvkind, and after containerd's restart


@pytest.mark.parametrize("env, message", [
    ({"FAKE_NVKIND_RC": "1", "FAKE_CREATES": "0"}, "nvkind could not create the cluster"),
    ({"FAKE_NO_CTK": "1"}, "nvkind did not install the NVIDIA container toolkit in cxr-worker"),
    ({"EXISTS": "1"}, "a kind cluster named cxr exists already"),
])
def test_make_cluster_stops_with_one_clear_line(tmp_path, env, message):
    result, calls = _make_cluster(tmp_path, **env)
    assert result.returncode != 0
    assert f"make cluster: error: {message}" in result.stderr
    assert not any("--set-as-default" in call for call in calls)


def test_make_load_sends_an_image_archive_to_the_workers_only_and_removes_it(tmp_path):
    result, calls = _make_cluster(tmp_path, "load", TMPDIR=str(tmp_path))
    assert result.returncode == 0, result.stderr
    [save] = [c for c in calls if c.startswith("docker save")]
    archive = save.split()[3]
    assert save == f"docker save -o {archive} localhost/cxr-bench:0.1.0-gpu" and archive.startswith(str(tmp_path))
    assert f"kind load image-archive {archive} --name cxr --nodes cxr-worker2,cxr-worker" in calls
    assert f"archive {archive} held image localhost/cxr-bench:0.1.0-gpu" in calls  # saved before it was loaded
    assert not Path(archive).exists()  # a multi-GB temporary file must not stay behind
