"""`cxr serve` as a user runs it: a real server process on a free loopback port, real HTTP requests (v1 and v2),
the probabilities `cxr predict` gives, every bad request refused with its 4xx while the server stays up, and a
clean exit on SIGTERM. One server process for the module; its tests run in file order, SIGTERM last."""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
from PIL import Image

from cxr.cli import main
from tests.conftest import free_port, huge_png

# The first test to run builds the module's server: one training, one prediction and the server's start-up.
pytestmark = pytest.mark.timeout(600)

NAME = "cxr-pneumonia"
BODY_LIMIT = 1_000_000  # CXR_SERVE_MAX_BODY_BYTES of the test server: a body over it is quick to send
START_TIMEOUT = 300  # seconds for TensorFlow's import and the model's load on a busy 2-core machine


@pytest.fixture(scope="module")
def trained(evaluated_mobilenet) -> Path:
    """conftest's MobileNet (one epoch at 32 px) with its evaluation beside it; the server only reads it."""
    return evaluated_mobilenet


@pytest.fixture(scope="module")
def films(raw_dataset, tmp_path_factory) -> list[Path]:
    """Test films as they come (JPEG, grayscale and RGB) and the modes a user may send: RGB PNG, 16-bit PNG,
    CMYK JPEG."""
    folder = tmp_path_factory.mktemp("films")
    found = sorted(raw_dataset.glob("test/*/*.jpeg"))[::2][:12]
    with Image.open(found[0]) as image:
        gray = np.asarray(image.convert("L"))
    Image.fromarray(gray).convert("RGB").save(folder / "rgb.png")
    Image.fromarray(gray.astype(np.uint16) * 16 + 100).save(folder / "sixteen-bit.png")
    Image.fromarray(gray).convert("CMYK").save(folder / "cmyk.jpeg")
    return [*found, folder / "rgb.png", folder / "sixteen-bit.png", folder / "cmyk.jpeg"]


@pytest.fixture(scope="module")
def threshold(trained, films) -> float:
    """One float64 step above the first film's probability: NORMAL for it in float64 (as `cxr predict` and
    `cxr evaluate` decide), PNEUMONIA in float32, which rounds the step away. The server must say NORMAL."""
    from cxr.serving.predict import predict_files

    # All the films, as the v1 test sends them: the same batch, so the same float32 results.
    probability = float(predict_files(trained, films, threshold=0.5)["probability"].iloc[0])
    above = float(np.nextafter(probability, np.inf))
    assert np.float32(above) == np.float32(probability)  # the case a float32 comparison gets wrong
    return above


class Server:
    def __init__(self, process: subprocess.Popen, port: int, log: Path):
        self.process, self.port, self.log = process, port, log
        self.url = f"http://127.0.0.1:{port}"

    def v1(self, body, **kwargs) -> requests.Response:
        kwargs.setdefault("headers", {"Content-Type": "application/json"})
        data = body if isinstance(body, (bytes, str, Iterator)) else json.dumps(body)
        return requests.post(f"{self.url}/v1/models/{NAME}:predict", data=data, timeout=120, **kwargs)

    def v2(self, body, **kwargs) -> requests.Response:
        kwargs.setdefault("headers", {"Content-Type": "application/json"})
        data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        return requests.post(f"{self.url}/v2/models/{NAME}/infer", data=data, timeout=120, **kwargs)


@pytest.fixture(scope="module")
def server(trained, threshold, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "stderr.log"
    env = {**os.environ, "CXR_SERVE_MAX_BODY_BYTES": str(BODY_LIMIT)}
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [str(Path(sys.executable).with_name("cxr")), "serve", "--model", str(trained), "--threshold",
             repr(threshold), "--port", str(port)], stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if requests.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2).status_code == 200:
                break
        except (requests.ConnectionError, requests.Timeout):  # the port is bound before the model has loaded
            time.sleep(0.5)
    else:
        process.kill()
        pytest.fail(f"cxr serve did not become ready (exit {process.poll()}):\n{log.read_text()[-3000:]}")
    yield Server(process, port, log)
    if process.poll() is None:
        process.kill()
        process.wait(timeout=30)


def _b64(path: Path) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode()


def _v1_body(paths) -> dict:
    return {"instances": [{"b64": _b64(p)} for p in paths]}


def _v2_body(paths) -> dict:
    return {"inputs": [{"name": "image_bytes", "shape": [len(paths)], "datatype": "BYTES",
                        "data": [_b64(p) for p in paths]}]}


def _predicted(trained, films, threshold, tmp_path) -> pd.DataFrame:
    out = tmp_path / "predicted.csv"
    assert main(["predict", "--model", str(trained), "--threshold", repr(threshold), "--out", str(out),
                 *map(str, films)]) == 0
    return pd.read_csv(out, keep_default_na=False)


def test_it_listens_on_loopback_only(server):
    """Bound to 127.0.0.1 by default (KServe's own server binds 0.0.0.0): the kernel's table of listening
    sockets has this port on 127.0.0.1 and nowhere else."""
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port = local.split(":")
            if state == "0A" and int(port, 16) == server.port:  # 0A: LISTEN
                listening.append(address)
    assert listening == ["0100007F"]  # 127.0.0.1, little-endian hex
    assert requests.get(f"{server.url}/v1/models/{NAME}", timeout=10).json() == {"name": NAME, "ready": True}


def test_v1_answers_what_predict_prints(server, trained, films, threshold, tmp_path):
    response = server.v1(_v1_body(films))
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    expected = _predicted(trained, films, threshold, tmp_path)
    assert len(predictions) == len(films) and (expected["error"] == "").all()
    np.testing.assert_allclose([p["probability"] for p in predictions], expected["probability"], atol=1e-4, rtol=0)
    assert [p["decision"] for p in predictions] == expected["decision"].tolist()
    assert predictions[0]["decision"] == "NORMAL"  # the threshold one float64 step above its probability


def test_v2_answers_what_predict_prints(server, trained, films, threshold, tmp_path):
    expected = _predicted(trained, films, threshold, tmp_path)
    response = server.v2(_v2_body(films))
    assert response.status_code == 200, response.text
    outputs = {output["name"]: output for output in response.json()["outputs"]}
    assert {n: (o["datatype"], o["shape"]) for n, o in outputs.items()} == {
        "probability": ("FP32", [len(films)]), "decision": ("BYTES", [len(films)])}
    np.testing.assert_allclose(outputs["probability"]["data"], expected["probability"], atol=1e-4, rtol=0)
    assert outputs["decision"]["data"] == expected["decision"].tolist()

    # The binary tensor extension: kserve 0.21 decodes binary BYTES as UTF-8 (a 500 echoing the film's bytes),
    # so it is refused up front, with what to send instead.
    raw = b"".join(struct.pack("<I", len(data)) + data for data in (Path(f).read_bytes() for f in films))
    header = json.dumps({"inputs": [{"name": "image_bytes", "shape": [len(films)], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(raw)}}]}).encode()
    response = server.v2(header + raw, headers={"Content-Type": "application/octet-stream",
                                                 "Inference-Header-Content-Length": str(len(header))})
    assert response.status_code == 415 and "base64" in response.json()["error"], response.text


def _declared_too_large(server: Server, films=None):
    """A Content-Length over the limit, refused before the body is sent."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    connection.putrequest("POST", f"/v1/models/{NAME}:predict")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(BODY_LIMIT * 50))
    connection.endheaders()
    response = connection.getresponse()
    status, body = response.status, json.loads(response.read())
    connection.close()
    return status, body


def _chunked_too_large(server: Server, films=None):
    """A chunked body (no Content-Length) that grows over the limit."""
    def chunks():
        for _ in range(3):
            yield b" " * (BODY_LIMIT // 2 + 1)

    response = server.v1(chunks())
    return response.status_code, response.json()


def _request(send):
    def run(server: Server, films):
        response = send(server, films)
        return response.status_code, response.json()
    return run


BAD_REQUESTS = {
    "not base64": (_request(lambda s, f: s.v1({"instances": [{"b64": "this is not base64!"}]})), 400,
                   "instance 0: not base64"),
    "not an image": (_request(lambda s, f: s.v1({"instances": [{"b64": base64.b64encode(b"notes").decode()}]})),
                     400, "instance 0: not a JPEG or PNG image"),
    "too large to decode": (_request(lambda s, f: s.v1({"instances": [{"b64": base64.b64encode(huge_png())
                                                                       .decode()}]})), 400, "too large to decode"),
    "one bad film among good ones": (_request(lambda s, f: s.v1({"instances": [
        {"b64": _b64(f[0])}, {"b64": "%%%"}, {"b64": _b64(f[1])}]})), 400, "1 of 3 film(s) refused"),
    "an empty batch": (_request(lambda s, f: s.v1({"instances": []})), 400, "empty batch"),
    "an empty v2 batch": (_request(lambda s, f: s.v2({"inputs": [{"name": "image_bytes", "shape": [0],
                                                                  "datatype": "BYTES", "data": []}]})),
                          400, "empty batch"),
    "too many instances": (_request(lambda s, f: s.v1(_v1_body([f[0]] * 33))), 413, "at most 32"),
    "a v2 input that is not BYTES": (_request(lambda s, f: s.v2({"inputs": [{"name": "image_bytes", "shape": [1],
                                                                             "datatype": "FP32", "data": [1.0]}]})),
                                     400, "must be BYTES"),
    "not JSON": (_request(lambda s, f: s.v1(b'{"instances": [')), 400, "Unrecognized request format"),
    "a body declared over the limit": (_declared_too_large, 413, "split the batch"),
    "a chunked body over the limit": (_chunked_too_large, 413, "split the batch"),
    "a wrong content type": (_request(lambda s, f: s.v1(_v1_body(f[:1]), headers={"Content-Type": "text/plain"})),
                             415, "Content-Type must be application/json"),
    "curl's default content type": (_request(lambda s, f: requests.post(
        f"{s.url}/v2/models/{NAME}/infer", data={"x": "y"}, timeout=60)), 415, "x-www-form-urlencoded"),
    "an unknown model": (_request(lambda s, f: requests.post(
        f"{s.url}/v1/models/no-such-model:predict", json=_v1_body(f[:1]), timeout=60)), 404, "no-such-model"),
    "unloading the model": (_request(lambda s, f: requests.post(
        f"{s.url}/v2/repository/models/{NAME}/unload", json={}, timeout=60)), 403, "fixed"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_a_bad_request_gets_its_4xx_and_the_next_request_is_answered(server, films, case):
    send, status, message = BAD_REQUESTS[case]
    got_status, body = send(server, films)
    assert (got_status, message in body.get("error", "")) == (status, True), body
    good = server.v1(_v1_body(films[:2]))
    assert good.status_code == 200 and len(good.json()["predictions"]) == 2, good.text


def test_a_port_in_use_or_a_model_folder_without_a_model_is_one_line(trained, tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--model", str(trained), "--threshold", "0.5", "--port", str(port)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"cxr serve: error: --host 127.0.0.1 --port {port}: cannot listen there")
    assert "\n" not in error
    assert main(["serve", "--model", str(tmp_path), "--threshold", "0.5", "--port", "0"]) == 2
    assert "--model must be a folder `cxr train` wrote" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:  # argparse: one of --result, --threshold
        main(["serve", "--model", str(trained), "--threshold", "0.5", "--result", str(trained)])
    assert exited.value.code == 2


def test_sigterm_ends_it_cleanly(server):
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=60) == 0
    assert "Shutting down" in server.log.read_text()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{server.url}/v2/health/ready", timeout=5)


def test_the_inferenceservice_runs_cxr_serve_in_the_projects_image():
    """KServe's CRD is not in kubernetes-validate's schemas: the predictor's container is checked as a Pod's
    container against the Kubernetes schema, and its command line against cxr's own parser."""
    import kubernetes_validate
    import yaml

    from cxr import settings
    from cxr.cli import build_parser
    from tests.test_deploy import KUBERNETES_VERSION, ROOT

    [manifest] = yaml.safe_load_all((ROOT / "k8s/serving/inferenceservice.yaml").read_text())
    assert (manifest["apiVersion"], manifest["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    assert manifest["metadata"]["name"] == settings.SERVE_MODEL_NAME
    [container] = manifest["spec"]["predictor"]["containers"]
    kubernetes_validate.validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"},
                                  "spec": {"containers": [container]}}, KUBERNETES_VERSION, strict=True)
    assert container["name"] == "kserve-container"  # the name KServe gives STORAGE_URI and /mnt/models to
    assert container["image"] == settings.COMPONENT_IMAGE.rsplit(":", 1)[0] + f":{settings.VERSION}-cpu"
    assert container["command"] == ["cxr", "serve"]
    args = build_parser().parse_args(["serve", *container["args"]])
    assert args.host == "0.0.0.0" and args.name == settings.SERVE_MODEL_NAME
    assert str(args.model).startswith("/mnt/models/") and str(args.result).startswith("/mnt/models/")
    assert [p["containerPort"] for p in container["ports"]] == [args.port] == [
        container["readinessProbe"]["httpGet"]["port"]]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"  # a route the server answers
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["STORAGE_URI"].startswith(("gs://", "s3://", "pvc://"))
    assert not any(p.name != "inferenceservice.yaml" for p in (ROOT / "k8s/serving").iterdir())  # no TF Serving
