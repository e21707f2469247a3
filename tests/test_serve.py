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
from cxr.data.images import NOT_JPEG_OR_PNG
from tests.conftest import free_port, huge_png

# The first test to run builds the module's server: one training, one prediction and the server's start-up.
pytestmark = pytest.mark.timeout(600)

NAME = "cxr-pneumonia"
BODY_LIMIT = 1_000_000  # CXR_SERVE_MAX_BODY_BYTES of the test server: a body over it is quick to send
READ_TIMEOUT = 3  # CXR_SERVE_READ_TIMEOUT of the test server: a stalled client is answered soon
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
    env = {**os.environ, "CXR_SERVE_MAX_BODY_BYTES": str(BODY_LIMIT), "CXR_SERVE_READ_TIMEOUT": str(READ_TIMEOUT)}
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



def _binary_v2(films) -> tuple[bytes, dict]:
    """The binary tensor extension as tritonclient sends it: no Content-Type, the JSON header's length."""
    raw = b"".join(struct.pack("<I", len(data)) + data for data in (Path(f).read_bytes() for f in films))
    header = json.dumps({"inputs": [{"name": "image_bytes", "shape": [len(films)], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(raw)}}],
                         "parameters": {"binary_data_output": True}}).encode()
    return header + raw, {"Inference-Header-Content-Length": str(len(header))}


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
    "not JSON": (_request(lambda s, f: s.v1(b'{"instances": [')), 400, "not JSON"),
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


def _text(values) -> list[str]:
    """tritonclient's BYTES: bytes from binary outputs, str from JSON ones."""
    return [v.decode() if isinstance(v, bytes) else v for v in values]


def test_tritonclient_and_kserves_client_get_what_predict_prints(server, trained, films, threshold, tmp_path,
                                                                 monkeypatch):
    """The Open Inference Protocol's clients as users run them: tritonclient's HTTP client finds the input in the
    model's metadata and sends the films as binary BYTES (its default) or as base64 JSON, without a Content-Type;
    KServe's InferenceRESTClient sends v1 and v2 JSON. Each gets `cxr predict`'s probabilities."""
    import asyncio

    import tritonclient.http as triton

    monkeypatch.setattr(sys, "argv", sys.argv[:1])  # kserve parses sys.argv when imported
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

    expected = _predicted(trained, films, threshold, tmp_path)
    client = triton.InferenceServerClient(f"127.0.0.1:{server.port}", network_timeout=120)
    metadata = client.get_model_metadata(NAME)
    [declared] = metadata["inputs"]
    assert (declared["datatype"], declared["shape"], metadata["platform"]) == ("BYTES", [-1], "keras")
    assert [(o["name"], o["datatype"]) for o in metadata["outputs"]] == [("probability", "FP32"),
                                                                          ("decision", "BYTES")]
    answers = {}
    for binary in (True, False):
        tensor = triton.InferInput(declared["name"], [len(films)], "BYTES")
        encoded = [Path(f).read_bytes() if binary else _b64(f) for f in films]
        tensor.set_data_from_numpy(np.array(encoded, dtype=object), binary_data=binary)
        outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in ("probability", "decision")]
        result = client.infer(NAME, [tensor], outputs=outputs)
        answers[f"tritonclient, binary {binary}"] = (result.as_numpy("probability"),
                                                     _text(result.as_numpy("decision")))
    result = client.infer(NAME, [tensor])  # no output asked for: tritonclient asks for every one in binary
    answers["tritonclient, default outputs"] = (result.as_numpy("probability"), _text(result.as_numpy("decision")))

    async def kserve_clients():
        v1 = InferenceRESTClient(RESTConfig(protocol="v1", timeout=120))
        answer = await v1.infer(server.url, _v1_body(films), model_name=NAME)
        answers["kserve v1"] = ([p["probability"] for p in answer["predictions"]],
                                [p["decision"] for p in answer["predictions"]])
        v2 = InferenceRESTClient(RESTConfig(protocol="v2", timeout=120))
        request = InferRequest(model_name=NAME, infer_inputs=[
            InferInput(declared["name"], [len(films)], "BYTES", data=[_b64(f) for f in films])])
        answer = await v2.infer(server.url, request, model_name=NAME)
        outputs = {output.name: output for output in answer.outputs}
        answers["kserve v2"] = (outputs["probability"].data, _text(outputs["decision"].data))
        await v1.close()
        await v2.close()

    asyncio.run(kserve_clients())
    for client_name, (probabilities, decisions) in answers.items():
        np.testing.assert_allclose(np.asarray(probabilities, np.float64), expected["probability"], atol=1e-4,
                                   rtol=0, err_msg=client_name)
        assert decisions == expected["decision"].tolist(), client_name


def test_json_is_taken_with_any_content_type_a_client_sends_for_it(server, films):
    body = json.dumps(_v1_body(films[:1]))
    for content_type in ("application/json; charset=utf-8", "Application/JSON", None):
        headers = {"Content-Type": content_type} if content_type else {}
        response = requests.post(f"{server.url}/v1/models/{NAME}:predict", data=body.encode(), headers=headers,
                                 timeout=120)
        assert response.status_code == 200, (content_type, response.text)
    body, headers = _binary_v2(films[:2])
    response = server.v2(body, headers={**headers, "Content-Type": "application/octet-stream"})
    assert response.status_code == 200 and "Inference-Header-Content-Length" in response.headers, response.text


def test_base64_with_line_breaks_is_taken(server, films):
    import textwrap

    wrapped = "\n".join(textwrap.wrap(_b64(films[0]), 76)) + "\n"  # `base64` without -w0
    response = server.v1({"instances": [{"b64": wrapped}]})
    expected = server.v1(_v1_body(films[:1]))
    assert response.status_code == 200, response.text
    assert response.json() == expected.json()


MALFORMED_V2 = {
    "a shape that is not a list": {"name": "image_bytes", "shape": "1", "datatype": "BYTES"},
    "no datatype": {"name": "image_bytes", "shape": [1]},
    "a shape that does not match the data": {"name": "image_bytes", "shape": [3], "datatype": "BYTES"},
}


@pytest.mark.parametrize("case", list(MALFORMED_V2))
def test_a_malformed_v2_request_is_a_400_that_does_not_echo_it(server, films, case):
    film = _b64(films[0])
    response = server.v2({"inputs": [{**MALFORMED_V2[case], "data": [film]}]})
    assert response.status_code == 400 and set(response.json()) == {"error"}, response.text[:500]
    assert film[:64] not in response.text and len(response.content) < 1000


def test_what_the_server_does_not_serve_is_a_4xx_and_one_log_line(server, films):
    before = server.log.read_text().count("\n")
    wrong = {
        "an unknown model, v1": (requests.post(f"{server.url}/v1/models/nobody:predict", json=_v1_body(films[:1]),
                                               timeout=60), 404),
        "an unknown model, v2": (requests.post(f"{server.url}/v2/models/nobody/infer", json=_v2_body(films[:1]),
                                               timeout=60), 404),
        "an unknown model's metadata": (requests.get(f"{server.url}/v2/models/nobody", timeout=60), 404),
        "a GET on :predict": (requests.get(f"{server.url}/v1/models/{NAME}:predict", timeout=60), 405),
        "a GET on infer": (requests.get(f"{server.url}/v2/models/{NAME}/infer", timeout=60), 405),
        "an explanation": (requests.post(f"{server.url}/v1/models/{NAME}:explain", json=_v1_body(films[:1]),
                                         timeout=60), 501),
    }
    for case, (response, status) in wrong.items():
        assert (response.status_code, "error" in response.json()) == (status, True), (case, response.text)
    log = server.log.read_text().splitlines()[before:]
    refusals = [line for line in log if "refused (" in line]
    assert len(refusals) == len(wrong) and not any("Traceback" in line for line in log), log


def test_metrics_count_every_answer_by_endpoint_and_status(server, films):
    def count(endpoint: str, status: int) -> float:
        text = requests.get(f"{server.url}/metrics", timeout=60).text
        line = f'cxr_serve_requests_total{{endpoint="{endpoint}",status="{status}"}} '
        return next((float(row[len(line):]) for row in text.splitlines() if row.startswith(line)), 0.0)

    before = {key: count(*key) for key in (("v1_predict", 200), ("v1_predict", 400), ("v1_predict", 415),
                                           ("v2_infer", 413))}
    server.v1(_v1_body(films[:1]))
    server.v1({"instances": [{"b64": "%%%"}]})
    server.v1(_v1_body(films[:1]), headers={"Content-Type": "text/plain"})
    server.v2(_v2_body([films[0]] * 33))
    assert {key: count(*key) - value for key, value in before.items()} == {
        ("v1_predict", 200): 1, ("v1_predict", 400): 1, ("v1_predict", 415): 1, ("v2_infer", 413): 1}


def _stall(server: Server, before_answer=lambda: None) -> str:
    """Send half a request, stall, and return the answer (its head and body) as text."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=120) as stalled:
        stalled.sendall(f"POST /v1/models/{NAME}:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        f"Content-Length: 1000\r\n\r\n{{\"instances\": ".encode())
        before_answer()
        response = http.client.HTTPResponse(stalled)
        response.begin()
        return f"{response.status} {response.read().decode()}"


def test_a_client_that_stalls_mid_request_gets_a_408(server):
    answer = _stall(server)
    assert answer.startswith("408") and "stalled" in answer, answer


def test_every_format_is_read_or_refused_as_predict_reads_or_refuses_it(server, trained, film_formats, tmp_path):
    """predict, serve (and, in tests/test_export.py, the SavedModel) take JPEG and PNG and refuse the others
    with one reason."""
    table = _predicted(trained, film_formats.values(), 0.5, tmp_path)
    for (kind, path), (_, row) in zip(film_formats.items(), table.iterrows(), strict=True):
        response = server.v1(_v1_body([path]))
        if kind in ("JPEG", "PNG"):
            assert row["error"] == "" and response.status_code == 200, (kind, response.text)
            assert abs(response.json()["predictions"][0]["probability"] - float(row["probability"])) < 1e-4
        else:
            assert row["error"] == NOT_JPEG_OR_PNG, kind
            assert (response.status_code, response.json()["error"]) == (
                400, f"1 of 1 film(s) refused, nothing predicted: instance 0: {NOT_JPEG_OR_PNG}"), kind


def _peak_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) * 1024


@pytest.mark.slow
def test_sixteen_bit_films_at_the_pixel_limit_decode_within_the_stated_memory(server, tmp_path):
    """Three requests at once, each a 7,990 x 7,990 16-bit PNG (under the 64-megapixel limit): the server's peak
    memory grows by at most SERVE_DECODE_SLOTS films of DECODE_BYTES_PER_PIXEL bytes a pixel (docs/serving.md).
    Before: one such film took 1.5 GB in float64 arrays, and each request decoded on its own thread."""
    from concurrent.futures import ThreadPoolExecutor

    from cxr import settings
    from cxr.data.images import DECODE_BYTES_PER_PIXEL

    side = 7990
    film = tmp_path / "wide16.png"
    row = (np.arange(side, dtype=np.uint32) * 3000 // side + 500).astype(np.uint16)
    Image.fromarray(np.ascontiguousarray(np.broadcast_to(row, (side, side)))).save(film)
    Path(f"/proc/{server.process.pid}/clear_refs").write_text("5")  # resets the peak (VmHWM) to the current size
    start = _peak_bytes(server.process.pid)
    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda _: server.v1(_v1_body([film])), range(3)))
    assert [a.status_code for a in answers] == [200] * 3, answers[0].text
    growth = _peak_bytes(server.process.pid) - start
    bound = settings.SERVE_DECODE_SLOTS * DECODE_BYTES_PER_PIXEL * side * side
    assert growth <= bound, f"peak grew {growth / 1e6:.0f} MB, over the stated {bound / 1e6:.0f} MB"


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


def test_settings_that_need_no_model_are_one_line_before_tensorflow_loads(trained, tmp_path):
    """--host with a password (never printed back), a --name that is not a URL path segment, --threshold and
    --out: refused before TensorFlow is imported, in one line."""
    cases = {
        ("serve", "--host", "http://admin:S3CRET-PASSWORD@127.0.0.1:8080"): "--host must be an address",
        ("serve", "--name", "a b?#"): "--name must be letters, digits",
        ("export", "--threshold", "2", "--out", str(tmp_path / "export")): "--threshold must be in [0, 1]",
        ("predict", "--out", str(tmp_path / "missing" / "x.csv"), str(trained)): "does not exist; create it",
    }
    for (command, *options), message in cases.items():
        run = subprocess.run(
            [sys.executable, "-c", "import sys; from cxr.cli import main; code = main(sys.argv[1:]); "
             "print('tensorflow' in sys.modules); sys.exit(code)", command, "--model", str(trained), *options],
            capture_output=True, text=True, timeout=300)
        assert (run.returncode, run.stdout.strip()) == (2, "False"), (command, options, run.stderr)
        assert run.stderr.count("\n") == 1 and message in run.stderr, run.stderr
        assert "S3CRET" not in run.stderr + run.stdout


def test_an_unfinished_training_or_evaluation_and_wrong_model_folders_each_get_their_line(
        trained, processed_dataset, tmp_path, capsys):
    import shutil

    from cxr.outputs import RECORD

    running = tmp_path / "running"
    shutil.copytree(trained, running)
    records = json.loads((running / RECORD).read_text())
    records["train"]["finished"] = False
    (running / RECORD).write_text(json.dumps(records))
    evaluating = tmp_path / "evaluating"
    shutil.copytree(trained, evaluating)
    records = json.loads((evaluating / RECORD).read_text())
    records["evaluate"]["finished"] = False
    (evaluating / RECORD).write_text(json.dumps(records))
    evaluation = tmp_path / "evaluation"
    evaluation.mkdir()
    shutil.copy(trained / "metrics.json", evaluation)
    film = str(next(processed_dataset.parent.glob("**/*.jpeg"), trained / "model.keras"))
    unfinished_training = "its training has not finished"
    commands = {
        ("predict", "--model", str(running), "--threshold", "0.5", film): unfinished_training,
        ("export", "--model", str(running), "--threshold", "0.5", "--out", str(tmp_path / "e")): unfinished_training,
        ("serve", "--model", str(running), "--threshold", "0.5", "--port", "0"): unfinished_training,
        ("evaluate", "--data", str(processed_dataset), "--model", str(running), "--out", str(tmp_path / "v")):
            unfinished_training,
        ("explain", "--data", str(processed_dataset), "--model", str(running), "--result", str(trained), "--out",
         str(tmp_path / "x")): unfinished_training,
        ("predict", "--model", str(trained), "--result", str(evaluating), film): "its evaluation has not finished",
        ("serve", "--model", str(tmp_path / "nowhere"), "--threshold", "0.5"): "does not exist",
        ("serve", "--model", str(trained / "model.keras"), "--threshold", "0.5"): "is a file",
        ("serve", "--model", str(evaluation), "--threshold", "0.5"): "is the folder of `cxr evaluate`",
    }
    for argv, message in commands.items():
        assert main(list(argv)) == 2, argv
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and message in error, (argv, error)


def test_sigterm_ends_it_cleanly_even_with_a_stalled_client(server):
    """A client that sent half a request is answered 408 within the read timeout, and SIGTERM ends the server,
    exit 0, the stalled request never holding it (before: 33 s, then a 500)."""
    def sigterm_while_under_way():
        time.sleep(0.5)
        server.process.send_signal(signal.SIGTERM)

    answer = _stall(server, sigterm_while_under_way)
    assert answer.startswith("408"), answer
    assert server.process.wait(timeout=120) == 0
    log = server.log.read_text()
    assert "Shutting down" in log and "Traceback" not in log
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{server.url}/v2/health/ready", timeout=5)


# `cxr serve ARGS` whose model takes as long to load as a large model on a slow disk: it touches the file named
# first once its loading has begun, so that the test signals while the model loads however fast the machine is.
SLOW_LOAD = """
import sys, time
from pathlib import Path
from cxr.cli import main
from cxr.serving.server import PneumoniaModel

load = PneumoniaModel.load

def slow_load(self):
    Path(sys.argv[1]).touch()
    time.sleep(600)
    return load(self)

PneumoniaModel.load = slow_load
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_ctrl_c_or_sigterm_while_the_model_loads_is_one_line(trained, tmp_path):
    for sent, code in ((signal.SIGINT, 130), (signal.SIGTERM, 130)):
        loading = tmp_path / f"loading-{sent.name}"
        process = subprocess.Popen([sys.executable, "-c", SLOW_LOAD, str(loading), "serve", "--model", str(trained),
                                    "--threshold", "0.5", "--port", str(free_port())],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + START_TIMEOUT
        while not loading.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert loading.exists(), process.communicate(timeout=START_TIMEOUT)[1][-2000:]
        process.send_signal(sent)
        out, err = process.communicate(timeout=START_TIMEOUT)
        assert (process.returncode, err.strip().splitlines()[-1:]) == (code, ["cxr serve: interrupted"]), err
        assert "Traceback" not in err and "serving" not in out


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
