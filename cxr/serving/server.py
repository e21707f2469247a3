"""`cxr serve`: one trained model behind KServe's Python model server (a custom predictor), REST v1 and v2.

The films of a request go through the functions `cxr predict` uses (cxr.serving.trained: decode_bytes,
probabilities_of, decide), so the server answers what `cxr predict` prints for the same files. The model loads
once, before the port answers; the instances of one request are predicted as one batch.

    v1  POST /v1/models/NAME:predict  {"instances": [{"b64": "<base64 of a JPEG or PNG>"}, ...]}
        -> {"predictions": [{"probability": 0.93, "decision": "PNEUMONIA"}, ...]}
    v2  POST /v2/models/NAME/infer    {"inputs": [{"name": "image_bytes", "shape": [n], "datatype": "BYTES",
                                                    "data": ["<base64>", ...]}]}
        -> outputs "probability" (FP32 [n]) and "decision" (BYTES [n]).

A request is answered whole or refused whole (docs/serving.md says why): one bad film gets a 400 naming every
bad instance and nothing is predicted. Refused before the model runs, each with a JSON {"error": ...}: a wrong
content type (415), a body over SERVE_MAX_BODY_BYTES (413, before it is read), more than SERVE_MAX_INSTANCES
films (413), an empty batch, a film that is not base64, not an image or too large to decode safely (400), an
unknown model (404, KServe's).

Two things about kserve 0.21 this module works around: `kserve.model_server` parses sys.argv when imported
(`parser.parse_known_args()` at module level; argparse would read our `--model DIR` as its `--model_name`), so
it is imported with our arguments hidden; and its REST server binds 0.0.0.0 (`host="0.0.0.0"` in
protocol/rest/server.py), so the socket is bound here, on --host, and handed to uvicorn. gRPC is left off (it
would bind [::]:8081); the model repository's load/unload endpoints are refused (the served model is fixed).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import socket
import sys
import threading
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxr import settings
from cxr.data.images import UnreadableImage
from cxr.errors import UserError
from cxr.serving.trained import (
    Preprocessing,
    backbone_name,
    decide,
    decode_bytes,
    find_threshold,
    load_model,
    probabilities_of,
    read_preprocessing,
)

_argv, sys.argv = sys.argv, sys.argv[:1]  # kserve.model_server parses sys.argv at import (module docstring)
try:
    import kserve
    from fastapi.responses import JSONResponse
    from kserve.errors import InvalidInput
    from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
    from kserve.protocol.rest.server import RESTServer
finally:
    sys.argv = _argv

INPUT_NAME = "image_bytes"  # the v2 input's name, as the SavedModel's (cxr.serving.export.INPUT_NAME)
JSON = "application/json"
_log = logging.getLogger("cxr.serve")


class TooLarge(InvalidInput):
    """A request larger than the server takes (413): the client should split it."""


# --- Requests -> films (no HTTP here) ----------------------------------------------------------------------


def _check_count(count: int) -> None:
    if count == 0:
        raise InvalidInput("empty batch: send at least one film")
    if count > settings.SERVE_MAX_INSTANCES:
        raise TooLarge(f"{count} films in one request; at most {settings.SERVE_MAX_INSTANCES}: split the batch")


def _from_base64(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a base64 string, got {type(text).__name__}")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not base64") from None


def v1_films(payload: object) -> list[bytes | ValueError]:
    """The encoded films of a v1 body ({"instances": [{"b64": ...}]}); an instance that is not one is its
    ValueError, so that every bad instance can be named."""
    if not isinstance(payload, dict) or not isinstance(payload.get("instances"), list):
        raise InvalidInput('expected a JSON object {"instances": [{"b64": "<base64 of a JPEG or PNG>"}, ...]}')
    instances = payload["instances"]
    _check_count(len(instances))
    films: list[bytes | ValueError] = []
    for instance in instances:
        try:
            if not isinstance(instance, dict) or set(instance) != {"b64"}:
                raise ValueError('expected {"b64": "<base64 of a JPEG or PNG>"}')
            films.append(_from_base64(instance["b64"], '"b64"'))
        except ValueError as error:
            films.append(error)
    return films


def v2_films(request: InferRequest) -> list[bytes | ValueError]:
    """The encoded films of a v2 request: its one BYTES input, each element a base64 string."""
    if len(request.inputs) != 1:
        raise InvalidInput(f"expected one input ({INPUT_NAME!r}, BYTES), got {len(request.inputs)}")
    tensor = request.inputs[0]
    if tensor.datatype != "BYTES":
        raise InvalidInput(f"input {tensor.name!r} must be BYTES (encoded JPEG or PNG films), got {tensor.datatype}")
    try:
        values = list(tensor.as_numpy().reshape(-1))
    except (ValueError, TypeError) as error:
        raise InvalidInput(f"input {tensor.name!r}: its data does not match its shape {tensor.shape} "
                           f"({error})") from None
    _check_count(len(values))
    films: list[bytes | ValueError] = []
    for value in values:
        try:
            films.append(_from_base64(value, "each element"))
        except ValueError as error:
            films.append(error)
    return films


def decode_all(films: Sequence[bytes | ValueError], prep: Preprocessing) -> list[np.ndarray]:
    """Every film as the model's input (cxr.serving.trained.decode_bytes, the pixel limit checked on the header
    before decoding); any bad one refuses the request, naming each bad instance by its index."""
    pixels, problems = [], []
    for index, film in enumerate(films):
        try:
            if isinstance(film, ValueError):
                raise film
            pixels.append(decode_bytes(film, prep))
        except (ValueError, UnreadableImage) as error:
            problems.append(f"instance {index}: {error}")
    if problems:
        raise InvalidInput(f"{len(problems)} of {len(films)} film(s) refused, nothing predicted: "
                           + "; ".join(problems))
    return pixels


# --- The KServe model ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Served:
    """What a trained model folder gives the server: the model, its preprocessing and the threshold."""

    model_dir: Path
    backbone: str
    prep: Preprocessing
    threshold: float


class PneumoniaModel(kserve.Model):
    """A `cxr train` model as a KServe model: v1 dicts and v2 InferRequests in, P(pneumonia) and the decision out."""

    def __init__(self, name: str, served: Served):
        super().__init__(name)
        self.served = served
        self._model = None
        self._model_lock = threading.Lock()  # one forward pass at a time; films of other requests decode meanwhile

    def load(self) -> bool:
        self._model = load_model(self.served.model_dir)
        # One pass before the first request: the predict function is traced here, not while a client waits.
        size = self.served.prep.image_size
        probabilities_of(self._model, [np.zeros((size, size, 1), np.uint8)], 1)
        self.ready = True
        return self.ready

    def _probabilities(self, films: Sequence[bytes | ValueError]) -> np.ndarray:
        pixels = decode_all(films, self.served.prep)
        with self._model_lock:
            return probabilities_of(self._model, pixels, len(pixels))  # one request, one batch

    async def predict(self, payload, headers: dict | None = None, response_headers: dict | None = None):
        if isinstance(payload, InferRequest):
            probabilities = await asyncio.to_thread(self._probabilities, v2_films(payload))
            return _v2_response(self.name, payload, probabilities, decide(probabilities, self.served.threshold))
        probabilities = await asyncio.to_thread(self._probabilities, v1_films(payload))
        decisions = decide(probabilities, self.served.threshold)
        return {"predictions": [{"probability": float(p), "decision": d}
                                for p, d in zip(probabilities, decisions, strict=True)]}


def _v2_response(name: str, request: InferRequest, probabilities: np.ndarray, decisions: list[str]) -> InferResponse:
    count = len(decisions)
    return InferResponse(response_id=request.id or str(uuid.uuid4()), model_name=name, infer_outputs=[
        InferOutput("probability", [count], "FP32", data=probabilities.astype(np.float32).tolist()),
        InferOutput("decision", [count], "BYTES", data=decisions)])


# --- HTTP: limits checked before a body is read ---------------------------------------------------------------


async def _refuse(send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", JSON.encode()), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class RequestLimits:
    """ASGI middleware for every POST: the content type (415), the body size (413, from Content-Length before
    reading, else while reading a chunked body, never more than the limit held), and no model repository
    changes. The body read is handed on to the app as it came."""

    def __init__(self, app, max_body: int = settings.SERVE_MAX_BODY_BYTES):
        self.app, self.max_body = app, max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        path, headers = scope["path"], {k.decode().lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if path.startswith("/v2/repository/"):
            return await _refuse(send, 403, "the served model is fixed when `cxr serve` starts; no load or unload")
        media_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != JSON or "inference-header-content-length" in headers:
            # The v2 binary tensor extension is refused too: kserve 0.21 turns binary BYTES into UTF-8 text
            # (InferRequest.from_bytes), which an encoded film is not.
            return await _refuse(send, 415, f"Content-Type must be {JSON}, with the films base64-encoded (the "
                                 f"binary tensor extension is not supported), got {media_type or 'none'}")
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body):
            return await _refuse(send, 413, f"body of {declared} bytes; at most {self.max_body}: split the batch")
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_body:
                return await _refuse(send, 413, f"body over {self.max_body} bytes: split the batch")
        body, handed = b"".join(chunks), False

        async def replay():
            nonlocal handed
            if handed:
                return await receive()
            handed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


async def _invalid_input(_, error: InvalidInput) -> JSONResponse:
    """A refused request: one log line (KServe's own handler logs a traceback), the reason to the client."""
    status = 413 if isinstance(error, TooLarge) else 400
    _log.warning("refused (%d): %s", status, error)
    return JSONResponse(status_code=status, content={"error": str(error)})


class _RESTServer(RESTServer):
    """KServe's REST server on a socket bound here (on --host), with RequestLimits and one-line refusals."""

    def __init__(self, sock: socket.socket, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.socket = sock
        self.config.host, self.config.port = sock.getsockname()[:2]  # what uvicorn's start-up line says

    def _add_middlewares(self, app) -> None:
        super()._add_middlewares(app)
        app.add_middleware(RequestLimits)  # added last, so outermost: before KServe's timing and routing

    def _add_exception_handlers(self, app) -> None:
        super()._add_exception_handlers(app)
        app.add_exception_handler(InvalidInput, _invalid_input)
        app.add_exception_handler(TooLarge, _invalid_input)

    async def start(self) -> None:
        self.create_application()
        await self._server.serve(sockets=[self.socket])


class _ModelServer(kserve.ModelServer):
    """kserve.ModelServer with its REST server on our socket: the single-process path of ModelServer.start."""

    def __init__(self, sock: socket.socket):
        super().__init__(http_port=sock.getsockname()[1], enable_grpc=False, workers=1)
        self.socket = sock
        # KServe logs two timing lines per request on top of uvicorn's access line; /metrics has the latencies.
        logging.getLogger("kserve.trace").setLevel(logging.WARNING)

    def start(self, models: list) -> None:
        self._register_and_check_atleast_one_model_is_ready(models)
        self._rest_server = _RESTServer(self.socket, "kserve.model_server:app", self.dataplane,
                                        self.model_repository_extension, self.http_port,
                                        grace_period=self.grace_period, timeout_keep_alive=self.timeout_keep_alive)
        self.servers.append(self._rest_server.start())
        self.setup_event_loop()
        self.register_signal_handler()
        asyncio.run(self._serve())


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port, or one line saying why not (a port in use, a host not on this
    machine). Bound before the model loads, so that a wrong --port fails at once."""
    if not 0 <= port <= 65535:
        raise UserError(f"--port must be between 0 and 65535, got {port}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as error:
        raise UserError(f"--host {host} --port {port}: cannot listen there ({error.strerror or error})") from None


def serve(model_dir: Path, result_dir: Path | None = None, threshold: float | None = None,
          name: str = settings.SERVE_MODEL_NAME, host: str = settings.SERVE_HOST,
          port: int = settings.SERVE_PORT) -> None:
    """Serve model_dir's model as `name` on host:port until SIGTERM or SIGINT (then return)."""
    model_dir = Path(model_dir)
    # kserve 0.21 answers through FastAPI's ORJSONResponse, which FastAPI now warns about on the first request.
    warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")
    if not name or "/" in name or ":" in name:
        raise UserError(f"--name must be a plain name (it is part of the URL), got {name!r}")
    threshold = find_threshold(model_dir, result_dir, threshold)
    prep = read_preprocessing(model_dir)
    sock = bind(host, port)
    try:
        model = PneumoniaModel(name, Served(model_dir, backbone_name(model_dir), prep, threshold))
        model.load()
        where = "http://" + (f"[{host}]" if ":" in host else host) + f":{sock.getsockname()[1]}"
        print(f"serving {model.served.backbone} from {model_dir} (threshold {threshold:.6g}) as {name}: "
              f"{where}/v1/models/{name}:predict and {where}/v2/models/{name}/infer", flush=True)
        _ModelServer(sock).start([model])
    finally:
        sock.close()
