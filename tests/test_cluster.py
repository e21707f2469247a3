"""The submit and upload logic against a local stand-in for the KFP v2beta1 REST API, and cluster-ready and
kaggle-secret against a local stand-in for the Kubernetes API: a real cluster cannot run here, so the network is
stubbed at the HTTP boundary and everything above it (kfp.Client, the kubernetes client and its kubeconfig) is
real."""

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

from cxr import settings
from cxr.cli import main
from cxr.cluster import parse_arguments, submit
from cxr.errors import UserError
from pipelines.chest_xray_benchmark import YAML
from tests.conftest import free_port


class KfpStandIn(BaseHTTPRequestHandler):
    """Answers the v2beta1 calls kfp.Client makes for a run, an upload and a version upload."""

    state: dict = {}

    def _reply(self, body: dict, status: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        path, query = urlparse(self.path).path, parse_qs(urlparse(self.path).query)
        calls = self.state.setdefault("calls", [])
        calls.append(("GET", path))
        if path == "/apis/v2beta1/healthz":
            return self._reply({"multi_user": False})
        if path == "/apis/v2beta1/experiments":
            return self._reply({})
        if path == "/apis/v2beta1/pipelines":
            name = json.loads(query["filter"][0])["predicates"][0]["stringValue"]
            known = self.state.get("pipelines", {})
            return self._reply({"pipelines": [{"pipeline_id": known[name], "display_name": name}]} if name in known
                               else {})
        if path.startswith("/apis/v2beta1/runs/"):
            polls = self.state["polls"] = self.state.get("polls", 0) + 1
            final = self.state.get("final_state", "SUCCEEDED")
            return self._reply({"run_id": path.rsplit("/", 1)[1], "state": "RUNNING" if polls < 2 else final})
        return self._reply({"error": "not found"}, 404)

    def do_POST(self):
        path, query = urlparse(self.path).path, parse_qs(urlparse(self.path).query)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.state.setdefault("calls", []).append(("POST", path))
        if path == "/apis/v2beta1/experiments":
            return self._reply({"experiment_id": "exp-1", **json.loads(body)})
        if path == "/apis/v2beta1/runs":
            self.state["run"] = json.loads(body)
            return self._reply({"run_id": "run-42", "state": "PENDING"})
        if path == "/apis/v2beta1/pipelines/upload":
            self.state.setdefault("pipelines", {})[query["name"][0]] = "pipeline-7"
            self.state["uploaded"] = body
            return self._reply({"pipeline_id": "pipeline-7", "display_name": query["name"][0]})
        if path == "/apis/v2beta1/pipelines/upload_version":
            self.state["version"] = query
            return self._reply({"pipeline_id": query["pipelineid"][0], "pipeline_version_id": "version-2"})
        return self._reply({"error": "not found"}, 404)

    def log_message(self, *args):
        pass


@pytest.fixture
def kfp_host():
    KfpStandIn.state = {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), KfpStandIn)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_submit_sends_the_compiled_pipeline_with_its_arguments_and_waits(kfp_host):
    outcome = submit(kfp_host, YAML, {"source": "gs://b/raw", "epochs": 3, "backbones": ["VGG16"]},
                     experiment="cxr", poll_seconds=0.05)
    assert (outcome.run_id, outcome.state) == ("run-42", "SUCCEEDED")
    assert outcome.url == f"{kfp_host}/#/runs/details/run-42"
    run = KfpStandIn.state["run"]
    assert run["experiment_id"] == "exp-1"
    pipeline_spec, platform_spec = yaml.safe_load_all(YAML.read_text())
    assert run["pipeline_spec"] == {"pipeline_spec": pipeline_spec, "platform_spec": platform_spec}
    assert run["runtime_config"]["parameters"] == {"source": "gs://b/raw", "epochs": 3, "backbones": ["VGG16"]}
    assert KfpStandIn.state["polls"] == 2  # waited through RUNNING to the final state


def test_make_run_command_line_fails_on_a_failed_run_with_the_url(kfp_host, capsys):
    KfpStandIn.state.update(final_state="FAILED", polls=1)  # ends at the first poll: the CLI polls every 10 s
    code = main(["submit", "--host", kfp_host, "--arg", "epochs=2", "--arg", "source=kaggle"])
    captured = capsys.readouterr()
    assert code == 2 and "ended FAILED" in captured.err and "/#/runs/details/run-42" in captured.err
    assert KfpStandIn.state["run"]["runtime_config"]["parameters"] == {"epochs": 2, "source": "kaggle"}


def test_upload_creates_the_pipeline_then_adds_versions(kfp_host):
    assert main(["upload", "--host", kfp_host]) == 0
    assert b"chest-xray-backbone-benchmark" in KfpStandIn.state["uploaded"]
    assert main(["upload", "--host", kfp_host]) == 0
    assert KfpStandIn.state["version"]["pipelineid"] == ["pipeline-7"]
    assert KfpStandIn.state["version"]["name"][0].startswith("0.1.0-")


def test_an_unreachable_kfp_is_one_clear_line(capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again when the block ends: nothing listens there
    assert main(["submit", "--host", f"http://127.0.0.1:{port}"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "unreachable" in error and str(port) in error


def test_pipeline_arguments_parse_json_where_they_can():
    assert parse_arguments(["epochs=3", "lr=1e-4", "backbones=[\"VGG16\"]", "source=gs://b/p", "cache="]) == {
        "epochs": 3, "lr": 1e-4, "backbones": ["VGG16"], "source": "gs://b/p", "cache": ""}
    with pytest.raises(UserError, match="NAME=VALUE"):
        parse_arguments(["epochs"])


# --- cluster-ready and kaggle-secret against a Kubernetes API stand-in --------------------------------------


class KubernetesStandIn(BaseHTTPRequestHandler):
    """Answers the Kubernetes API calls `cxr cluster-ready` and `cxr kaggle-secret` make, from `state`: the KFP
    Deployments, the nodes' allocatable GPUs, the GPU check pod (its phases in turn, its log), the Secret."""

    state: dict = {}

    def _reply(self, body, status: int = 200) -> None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain" if isinstance(body, str) else "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self) -> tuple[str, dict | None]:
        path = urlparse(self.path).path
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length)) if length else None
        self.state.setdefault("calls", []).append((self.command, path))
        return path, body

    def _pod(self, name: str) -> dict:
        phases = self.state.setdefault("phases", ["Pending", "Succeeded"])
        phase = phases.pop(0) if len(phases) > 1 else phases[0]
        waiting = self.state.get("waiting", "ContainerCreating")
        status = {"phase": phase, "containerStatuses": [{
            "name": "gpus", "image": "x", "imageID": "", "ready": False, "restartCount": 0,
            "state": {"waiting": {"reason": waiting}} if phase == "Pending" else {"terminated": {"exitCode": 0}}}]}
        return {"kind": "Pod", "apiVersion": "v1", "metadata": {"name": name, "namespace": "kubeflow"},
                "spec": self.state["pod"]["spec"], "status": status}

    def do_GET(self):
        path, _ = self._record()
        if path == "/apis/apps/v1/namespaces/kubeflow/deployments":
            polls = self.state["deployment_polls"] = self.state.get("deployment_polls", 0) + 1
            available = 1 if polls > 1 else 0  # the first look finds KFP still starting
            return self._reply({"kind": "DeploymentList", "apiVersion": "apps/v1", "metadata": {}, "items": [
                {"metadata": {"name": name}, "spec": {"replicas": 1, "selector": {}, "template": {}},
                 "status": {"availableReplicas": available}} for name in ("ml-pipeline", "workflow-controller")]})
        if path == "/api/v1/nodes":
            gpus = self.state.get("gpus", "1")
            return self._reply({"kind": "NodeList", "apiVersion": "v1", "metadata": {}, "items": [
                {"metadata": {"name": "cxr-control-plane"}, "status": {"allocatable": {"cpu": "16"}}},
                {"metadata": {"name": "cxr-worker"},
                 "status": {"allocatable": {"cpu": "16", "nvidia.com/gpu": gpus}}}]})
        if path.startswith("/api/v1/namespaces/kubeflow/pods/"):
            name = path.split("/")[6]
            return self._reply(self.state.get("log", "")) if path.endswith("/log") else self._reply(self._pod(name))
        return self._reply({"kind": "Status", "code": 404}, 404)

    def do_POST(self):
        path, body = self._record()
        if path == "/api/v1/namespaces/kubeflow/pods":
            self.state["pod"] = body
            body = {**body, "metadata": {**body["metadata"], "name": body["metadata"]["generateName"] + "x7k2p"}}
            return self._reply(body, 201)
        if path == "/api/v1/namespaces/kubeflow/secrets":
            self.state["secret"] = body
            return self._reply(body, 201)
        return self._reply({"kind": "Status", "code": 404}, 404)

    def do_PUT(self):
        self._record()
        return self._reply({"kind": "Status", "code": 404, "reason": "NotFound"}, 404)  # no secret yet

    def do_DELETE(self):
        path, _ = self._record()
        return self._reply({"kind": "Pod", "apiVersion": "v1", "metadata": {"name": path.rsplit("/", 1)[1]}})

    def log_message(self, *args):
        pass


def _kubeconfig(tmp_path, monkeypatch, server: str) -> None:
    """A kubeconfig like the one kind writes, pointing at `server`; KUBECONFIG names it."""
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "kind-cxr",
        "clusters": [{"name": "kind-cxr", "cluster": {"server": server}}],
        "users": [{"name": "kind-cxr", "user": {"token": "stand-in"}}],
        "contexts": [{"name": "kind-cxr", "context": {"cluster": "kind-cxr", "user": "kind-cxr"}}]}))
    monkeypatch.setenv("KUBECONFIG", str(path))


@pytest.fixture
def kubernetes_api(tmp_path, monkeypatch):
    """The real kubernetes client, through a kubeconfig, against the stand-in: a cluster cannot run here, so the
    network is stubbed at the HTTP boundary."""
    KubernetesStandIn.state = {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), KubernetesStandIn)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _kubeconfig(tmp_path, monkeypatch, f"http://127.0.0.1:{server.server_port}")
    yield KubernetesStandIn.state
    server.shutdown()


@pytest.fixture
def closed_port_api(tmp_path, monkeypatch) -> int:
    """A kubeconfig whose API server port nothing listens on: a stopped or deleted cluster."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    _kubeconfig(tmp_path, monkeypatch, f"http://127.0.0.1:{port}")
    return port


def _error_lines(err: str) -> list[str]:
    assert "Traceback" not in err
    return [line for line in err.splitlines() if ": error: " in line]


def test_cluster_ready_runs_cxr_gpus_in_a_pod_on_the_gpu_node(kubernetes_api, capsys):
    kubernetes_api["log"] = "GPU 0: NVIDIA H100\n"
    code = main(["cluster-ready", "--timeout", "30", "--poll", "0.01", "--image", "registry.example/cxr:1-gpu"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "waiting for 2: deployment ml-pipeline, deployment workflow-controller" in captured.err
    assert "waiting for the GPU check pod cxr-gpu-check-x7k2p: ContainerCreating" in captured.err
    assert "a pod on the GPU node sees GPU 0: NVIDIA H100" in captured.out
    spec = kubernetes_api["pod"]["spec"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert spec["restartPolicy"] == "Never"
    [container] = spec["containers"]
    assert container["image"] == "registry.example/cxr:1-gpu" and container["command"] == ["cxr", "gpus"]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert ("DELETE", "/api/v1/namespaces/kubeflow/pods/cxr-gpu-check-x7k2p") in kubernetes_api["calls"]


@pytest.mark.parametrize("phase, log", [
    ("Failed", "cxr gpus: error: no GPU visible to tensorflow\n"),  # what `cxr gpus` says without a GPU
    ("Succeeded", "Tensorflow started\n"),  # a zero exit that lists no GPU is no GPU either
])
def test_cluster_ready_fails_in_one_line_when_the_pod_sees_no_gpu_and_deletes_it(kubernetes_api, capsys, phase, log):
    kubernetes_api.update(phases=["Pending", phase], log=log)
    assert main(["cluster-ready", "--timeout", "30", "--poll", "0.01"]) == 2
    [error] = _error_lines(capsys.readouterr().err)
    assert "sees no GPU" in error and log.strip() in error and "not containerd's default" in error
    assert ("DELETE", "/api/v1/namespaces/kubeflow/pods/cxr-gpu-check-x7k2p") in kubernetes_api["calls"]
    assert kubernetes_api["pod"]["spec"]["containers"][0]["image"] == settings.COMPONENT_IMAGE


def test_cluster_ready_stops_at_an_image_that_cannot_be_pulled(kubernetes_api, capsys):
    kubernetes_api.update(phases=["Pending"], waiting="ImagePullBackOff")
    assert main(["cluster-ready", "--timeout", "30", "--poll", "0.01"]) == 2
    [error] = _error_lines(capsys.readouterr().err)
    assert "ImagePullBackOff" in error and "make images load" in error
    assert ("DELETE", "/api/v1/namespaces/kubeflow/pods/cxr-gpu-check-x7k2p") in kubernetes_api["calls"]


def test_cluster_ready_without_an_allocatable_gpu_times_out_naming_the_device_plugin(kubernetes_api, capsys):
    kubernetes_api["gpus"] = "0"
    assert main(["cluster-ready", "--timeout", "0.2", "--poll", "0.05"]) == 2
    [error] = _error_lines(capsys.readouterr().err)
    assert "allocatable nvidia.com/gpu" in error and "CrashLoopBackOff" in error
    assert "pod" not in kubernetes_api  # no GPU check pod without a GPU to give it


def test_cluster_ready_no_gpu_skips_the_gpu_checks(kubernetes_api, capsys):
    kubernetes_api["gpus"] = "0"
    assert main(["cluster-ready", "--no-gpu", "--timeout", "5", "--poll", "0.01"]) == 0
    assert capsys.readouterr().out == "ready: every deployment in kubeflow is available\n"
    assert "pod" not in kubernetes_api


def test_cluster_ready_keeps_waiting_for_an_unreachable_api_then_says_so_in_one_line(closed_port_api, capsys):
    assert main(["cluster-ready", "--timeout", "3", "--poll", "0.5"]) == 2
    err = capsys.readouterr().err
    waits = [line for line in err.splitlines() if line.startswith("waiting for 1: the Kubernetes API")]
    assert len(waits) >= 2 and f"127.0.0.1:{closed_port_api} is unreachable" in waits[0]
    [error] = _error_lines(err)
    assert error.startswith("cxr cluster-ready: error: not ready after 3 s") and "unreachable" in error


def test_kaggle_secret_is_created_without_printing_the_key(kubernetes_api, monkeypatch, capsys):
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "k-3f9a1c")
    assert main(["kaggle-secret"]) == 0
    secret = kubernetes_api["secret"]
    assert secret["metadata"]["name"] == settings.KAGGLE_SECRET
    assert secret["stringData"] == {"KAGGLE_USERNAME": "someone", "KAGGLE_KEY": "k-3f9a1c"}
    assert [c[0] for c in kubernetes_api["calls"]] == ["PUT", "POST"]  # replace, then create when absent
    captured = capsys.readouterr()
    assert "k-3f9a1c" not in captured.out + captured.err


def test_kaggle_secret_with_an_unreachable_api_is_one_line(closed_port_api, monkeypatch, capsys):
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "k-3f9a1c")
    assert main(["kaggle-secret"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"127.0.0.1:{closed_port_api} is unreachable" in err and "k-3f9a1c" not in err


def test_a_password_in_the_kfp_url_is_never_printed(kfp_host, capsys, caplog):
    port = kfp_host.rsplit(":", 1)[1]
    with_password = f"http://alice:s3cret-pw@127.0.0.1:{port}"
    KfpStandIn.state.update(final_state="FAILED", polls=1)  # ends at the first poll: the CLI polls every 10 s
    assert main(["submit", "--host", with_password, "--arg", "epochs=2"]) == 2
    closed = f"http://alice:s3cret-pw@127.0.0.1:{free_port()}"
    assert main(["submit", "--host", closed]) == 2
    captured = capsys.readouterr()
    printed = captured.out + captured.err + caplog.text
    assert "ended FAILED" in printed and "is unreachable" in printed and "alice:***@127.0.0.1" in printed
    assert "s3cret-pw" not in printed
