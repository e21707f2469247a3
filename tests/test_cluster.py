"""The submit and upload logic against a local stand-in for the KFP v2beta1 REST API: a real cluster cannot run
here, so the network is stubbed at the HTTP boundary and everything above it (kfp.Client included) is real."""

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

from cxr.cli import main
from cxr.cluster import parse_arguments, submit
from cxr.errors import UserError
from pipelines.chest_xray_benchmark import YAML


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
    KfpStandIn.state["final_state"] = "FAILED"
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
