"""`cxr serve`: one trained model behind KServe's Python model server (a custom predictor), REST v1 and the Open
Inference Protocol (v2) as its clients speak it (cxr.serving.protocol: JSON with or without a Content-Type, the
binary tensor extension both ways, the model's inputs and outputs in its metadata).

The films of a request go through the functions `cxr predict` uses (cxr.serving.trained: decode_bytes,
probabilities_of, decide), so the server answers what `cxr predict` prints for the same files. The model loads
once, before the port answers; the instances of one request are predicted as one batch; at most
SERVE_DECODE_SLOTS films are decoded at once over all requests, which bounds the server's memory.

A request is answered whole or refused whole (docs/serving.md says why): one bad film gets a 400 naming every
bad instance and nothing is predicted. Every refusal is a 4xx with a JSON {"error": ...} and one log line, never
the request's data: a content type that is not JSON (415), a body over SERVE_MAX_BODY_BYTES (413, before it is
read) or more than SERVE_MAX_INSTANCES films (413), a body that stalls (408), a malformed request or a bad film
(400), an unknown model (404), a GET on an inference path (405), an explanation (501). `/metrics` counts every
answer by endpoint and status (cxr_serve_requests_total).

The inference and metadata routes are the server's own, registered before KServe's, because three things about
kserve 0.21 stand in the way of the protocol's clients: its v2 metadata says `"inputs": []` and `"platform": ""`
(DataPlane.model_metadata), its v1 handler compares the Content-Type exactly (DataPlane.decode, JSON_HEADERS),
and its binary extension turns BYTES into UTF-8 text (InferRequest.from_bytes), which an encoded film is not.
Two more are worked around: `kserve.model_server` parses sys.argv when imported (`parser.parse_known_args()`
at module level; argparse would read our `--model DIR` as its `--model_name`), so it is imported with our
arguments hidden; and its REST server binds 0.0.0.0 (`host="0.0.0.0"` in protocol/rest/server.py), so the socket
is bound here, on --host, and handed to uvicorn. gRPC is left off (it would bind [::]:8081); the model
repository's load/unload endpoints are refused (the served model is fixed).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import socket
import sys
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxr import settings
from cxr.data.images import UnreadableImage
from cxr.errors import UserError
from cxr.serving import protocol
from cxr.serving.protocol import BadRequest, Film, TooLarge
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
    from fastapi import APIRouter, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from kserve.errors import InvalidInput, ModelNotFound
    from kserve.protocol.rest.server import RESTServer
    from prometheus_client import Counter
finally:
    sys.argv = _argv

JSON = "application/json"
BINARY = "application/octet-stream"  # the binary tensor extension's body (tritonclient sends no Content-Type)
HEADER_LENGTH = "inference-header-content-length"
# What a URL path segment carries unescaped (RFC 3986 "unreserved"): a name is printed in URLs as it is.
NAME = re.compile(r"[A-Za-z0-9._~-]+")
_log = logging.getLogger("cxr.serve")

# Every answer, refusals included, by endpoint (ENDPOINTS: a fixed set, so a client cannot add labels) and status.
REQUESTS = Counter("cxr_serve_requests", "HTTP requests answered by cxr serve, by endpoint and status",
                   ["endpoint", "status"])
ENDPOINTS = [(re.compile(pattern), label) for pattern, label in (
    (r"/v1/models/[^/]+:predict", "v1_predict"), (r"/v1/models/[^/]+:explain", "v1_explain"),
    (r"/v2/models/[^/]+(/versions/[^/]+)?/infer", "v2_infer"), (r"/v2/models/[^/]+(/versions/[^/]+)?/ready", "health"),
    (r"/v2/models/[^/]+(/versions/[^/]+)?", "v2_metadata"), (r"/v2/health/(live|ready)", "health"),
    (r"/v1/models/[^/]+", "health"), (r"/metrics", "metrics"), (r"/v2/repository/.*", "repository"))]


def endpoint_of(path: str) -> str:
    """The metrics label of a request path; "other" for anything the server does not serve."""
    return next((label for pattern, label in ENDPOINTS if pattern.fullmatch(path)), "other")


def check_name(name: str) -> None:
    if not NAME.fullmatch(name) or name in (".", ".."):
        raise UserError(f"--name must be letters, digits and . _ ~ - only (it is part of the URLs), got {name!r}")


def check_host(host: str) -> None:
    """--host is an address, never a URL: a URL's user and password must not reach the log (nor be echoed)."""
    if any(mark in host for mark in ("/", "@", "?", "#")):
        raise UserError("--host must be an address to listen on, such as 127.0.0.1 or 0.0.0.0, not a URL")


# --- Films -> the model's inputs ------------------------------------------------------------------------------


def decode_all(films: Sequence[Film], prep: Preprocessing, slots: threading.Semaphore) -> list[np.ndarray]:
    """Every film as the model's input (cxr.serving.trained.decode_bytes, the pixel limit checked on the header
    before decoding), each while holding one of the server's decode slots; any bad one refuses the request,
    naming each bad instance by its index."""
    pixels, problems = [], []
    for index, film in enumerate(films):
        try:
            if isinstance(film, ValueError):
                raise film
            with slots:
                pixels.append(decode_bytes(film, prep))
        except (ValueError, UnreadableImage) as error:
            problems.append(f"instance {index}: {error}")
    if problems:
        raise BadRequest(f"{len(problems)} of {len(films)} film(s) refused, nothing predicted: "
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
    """A `cxr train` model as a KServe model (its readiness is KServe's health endpoints): films in,
    P(pneumonia) and the decision out."""

    def __init__(self, name: str, served: Served):
        super().__init__(name)
        self.served = served
        self._model = None
        self._model_lock = threading.Lock()  # one forward pass at a time; films of other requests decode meanwhile
        self._decode_slots = threading.BoundedSemaphore(settings.SERVE_DECODE_SLOTS)

    def load(self) -> bool:
        self._model = load_model(self.served.model_dir)
        # One pass before the first request: the predict function is traced here, not while a client waits.
        size = self.served.prep.image_size
        probabilities_of(self._model, [np.zeros((size, size, 1), np.uint8)], 1)
        self.ready = True
        return self.ready

    def answer(self, films: Sequence[Film]) -> tuple[np.ndarray, list[str]]:
        """P(pneumonia) and the decision of each film, the request's films as one batch."""
        pixels = decode_all(films, self.served.prep, self._decode_slots)
        with self._model_lock:
            probabilities = probabilities_of(self._model, pixels, len(pixels))
        return probabilities, decide(probabilities, self.served.threshold)


# --- HTTP ----------------------------------------------------------------------------------------------------


def _refusal(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    """A refused request: one log line (KServe's own handlers log a traceback), the reason to the client."""
    _log.warning("refused (%d): %s", status, message)
    return JSONResponse(status_code=status, content={"error": message}, headers=headers)


async def _send_refusal(send, status: int, message: str) -> None:
    """_refusal from ASGI middleware, before the app sees the request."""
    _log.warning("refused (%d): %s", status, message)
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", JSON.encode()), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _media_type(headers: dict[str, str]) -> str:
    return headers.get("content-type", "").split(";")[0].strip().lower()


class RequestLimits:
    """ASGI middleware for every POST: the content type (415: JSON, none, or the binary extension's octet
    stream), the body size (413, from Content-Length before reading, else while reading a chunked body, never
    more than the limit held), a body that stalls (408 after SERVE_READ_TIMEOUT without a byte), and no model
    repository changes. The body read is handed on to the app as it came."""

    def __init__(self, app, max_body: int = settings.SERVE_MAX_BODY_BYTES,
                 read_timeout: float = settings.SERVE_READ_TIMEOUT):
        self.app, self.max_body, self.read_timeout = app, max_body, read_timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        path, headers = scope["path"], {k.decode().lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if path.startswith("/v2/repository/"):
            return await _send_refusal(send, 403, "the served model is fixed when `cxr serve` starts; no load or "
                                       "unload")
        media_type = _media_type(headers)
        allowed = ("", JSON, BINARY) if HEADER_LENGTH in headers else ("", JSON)
        if media_type not in allowed:
            return await _send_refusal(send, 415, f"Content-Type must be {JSON} (or none; {BINARY} with the "
                                       f"binary tensor extension), got {media_type[:64]}")
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body):
            return await _send_refusal(send, 413, f"body of {declared[:20]} bytes; at most {self.max_body}: split "
                                       "the batch")
        chunks, size, more = [], 0, True
        while more:
            try:
                message = await asyncio.wait_for(receive(), self.read_timeout)
            except TimeoutError:
                return await _send_refusal(send, 408, f"the request body stalled: nothing arrived for "
                                           f"{self.read_timeout:g} s")
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_body:
                return await _send_refusal(send, 413, f"body over {self.max_body} bytes: split the batch")
        body, handed = b"".join(chunks), False

        async def replay():
            nonlocal handed
            if handed:
                return await receive()
            handed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


class CountRequests:
    """ASGI middleware, outermost: counts every answer in REQUESTS, refusals of RequestLimits included."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def counting_send(message):
            if message["type"] == "http.response.start":
                REQUESTS.labels(endpoint_of(scope["path"]), str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counting_send)


def inference_routes(model: PneumoniaModel) -> APIRouter:
    """The inference, metadata and explanation routes of `model`, ahead of KServe's (module docstring)."""
    router = APIRouter()
    served = model.name

    def known(name: str) -> None:
        if name != served:
            raise ModelNotFound(name[:64])

    async def v1_predict(request: Request, name: str) -> JSONResponse:
        known(name)
        films = protocol.v1_films(await request.body())
        probabilities, decisions = await asyncio.to_thread(model.answer, films)
        return JSONResponse(protocol.v1_answer(probabilities, decisions))

    async def v2_infer(request: Request, name: str, version: str | None = None) -> Response:
        known(name)
        infer = protocol.v2_request(await request.body(), request.headers.get(HEADER_LENGTH))
        probabilities, decisions = await asyncio.to_thread(model.answer, infer.films)
        body, header_length = protocol.v2_answer(served, infer, probabilities, decisions)
        if header_length is None:
            return Response(body, media_type=JSON)
        return Response(body, media_type=BINARY, headers={"Inference-Header-Content-Length": str(header_length)})

    async def v2_metadata(name: str, version: str | None = None) -> JSONResponse:
        known(name)
        return JSONResponse(protocol.model_metadata(served))

    async def post_only(request: Request, name: str, version: str | None = None) -> JSONResponse:
        return _refusal(405, f"{request.method} {request.url.path[:128]}: inference takes POST",
                        headers={"Allow": "POST"})

    async def explain(name: str) -> JSONResponse:
        known(name)
        return _refusal(501, "explanations are not served: `cxr explain` writes Grad-CAM panels of test films")

    others = ["GET", "PUT", "DELETE", "PATCH", "HEAD"]
    for path in ("/v1/models/{name}:predict",):
        router.add_api_route(path, v1_predict, methods=["POST"])
        router.add_api_route(path, post_only, methods=others)
    for path in ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"):
        router.add_api_route(path, v2_infer, methods=["POST"])
        router.add_api_route(path, post_only, methods=others)
    for path in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        router.add_api_route(path, v2_metadata, methods=["GET"])
    router.add_api_route("/v1/models/{name}:explain", explain, methods=["GET", "POST"])
    return router


async def _bad_request(_, error: BadRequest) -> JSONResponse:
    return _refusal(413 if isinstance(error, TooLarge) else 400, str(error))


async def _invalid_input(_, error: InvalidInput) -> JSONResponse:
    return _refusal(400, str(error))


async def _malformed(_, error: RequestValidationError) -> JSONResponse:
    # FastAPI's own 422 quotes the whole request back, films included.
    fields = sorted({".".join(map(str, e.get("loc", ())))[:64] for e in error.errors()})
    return _refusal(400, f"malformed request: {', '.join(fields) or 'its body'}")


async def _unknown_model(_, error: ModelNotFound) -> JSONResponse:
    return _refusal(404, str(error)[:200])


async def _not_implemented(_, error: NotImplementedError) -> JSONResponse:
    return _refusal(501, str(error)[:200] or "not implemented")


class _RESTServer(RESTServer):
    """KServe's REST server on a socket bound here (on --host), with the model's own routes first, the two
    middlewares, one-line refusals, and shutdown bounded (SERVE_GRACE_SECONDS)."""

    def __init__(self, sock: socket.socket, model: PneumoniaModel, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.socket, self.model = sock, model
        self.config.host, self.config.port = sock.getsockname()[:2]  # what uvicorn's start-up line says
        self.config.timeout_graceful_shutdown = settings.SERVE_GRACE_SECONDS

    def _register_endpoints(self, app) -> None:
        app.include_router(inference_routes(self.model))  # first: a request matches the first route it fits
        super()._register_endpoints(app)

    def _add_middlewares(self, app) -> None:
        super()._add_middlewares(app)
        app.add_middleware(RequestLimits)  # added after KServe's, so outside them: before timing and routing
        app.add_middleware(CountRequests)  # outermost: it sees RequestLimits' refusals too

    def _add_exception_handlers(self, app) -> None:
        super()._add_exception_handlers(app)
        for error, handler in ((BadRequest, _bad_request), (TooLarge, _bad_request), (InvalidInput, _invalid_input),
                               (RequestValidationError, _malformed), (ModelNotFound, _unknown_model),
                               (NotImplementedError, _not_implemented)):
            app.add_exception_handler(error, handler)

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
        self._rest_server = _RESTServer(self.socket, models[0], "kserve.model_server:app", self.dataplane,
                                        self.model_repository_extension, self.http_port,
                                        grace_period=settings.SERVE_GRACE_SECONDS,
                                        timeout_keep_alive=self.timeout_keep_alive)
        self.servers.append(self._rest_server.start())
        self.setup_event_loop()
        self.register_signal_handler()
        asyncio.run(self._serve())

    def register_signal_handler(self) -> None:
        """KServe's handlers stop a running server; a signal that arrives after they are set but before uvicorn
        serves (and puts its own in their place) would be lost, and the process would serve on. Until uvicorn has
        started, a signal stops it as during the model's loading: one line, exit 130."""
        uvicorn_server = self._rest_server._server

        def stop_or_interrupt(signum: int, frame) -> None:
            if not uvicorn_server.started:
                _interrupt(signum, frame)
            self.stop(signum)

        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT):
            signal.signal(signum, stop_or_interrupt)


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


def _interrupt(signum: int, _frame) -> None:
    """SIGTERM while the model loads: stop as Ctrl-C does (the CLI says so in one line)."""
    raise KeyboardInterrupt


def serve(model_dir: Path, result_dir: Path | None = None, threshold: float | None = None,
          name: str = settings.SERVE_MODEL_NAME, host: str = settings.SERVE_HOST,
          port: int = settings.SERVE_PORT) -> None:
    """Serve model_dir's model as `name` on host:port until SIGTERM or SIGINT (then return)."""
    model_dir = Path(model_dir)
    # kserve 0.21 answers through FastAPI's ORJSONResponse, which FastAPI now warns about on the first request.
    warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")
    check_name(name)
    check_host(host)
    threshold = find_threshold(model_dir, result_dir, threshold)
    prep = read_preprocessing(model_dir)
    before = signal.signal(signal.SIGTERM, _interrupt)  # until serving, when uvicorn's handlers take over
    try:
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
    finally:
        signal.signal(signal.SIGTERM, before)
