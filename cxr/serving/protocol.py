"""The request and answer formats of `cxr serve`, without HTTP: KServe's v1 and the Open Inference Protocol (v2)
as its clients speak it (tritonclient's HTTP client, KServe's InferenceRESTClient).

    v1  {"instances": [{"b64": "<base64 of a JPEG or PNG>"}, ...]}
        -> {"predictions": [{"probability": 0.93, "decision": "PNEUMONIA"}, ...]}
    v2  one BYTES input of shape [n] (any name), each element a film: base64 text in JSON, or the file's bytes in
        the binary tensor extension (the JSON header, then per element a 4-byte little-endian length and the
        bytes; `Inference-Header-Content-Length` gives the header's length)
        -> "probability" (FP32 [n]) and "decision" (BYTES [n]), each as JSON or, when asked for, binary.

Sources: the Open Inference Protocol's REST spec and its binary tensor extension (kserve/open-inference-protocol;
triton-inference-server/server docs/protocol/extension_binary_data.md), and what tritonclient 2.73's HTTP client
sends and reads (tritonclient/http/_utils.py `_get_inference_request`: no output asked for means
`"binary_data_output": true`; _infer_result.py reads `binary_data_size` per output). A malformed request raises
BadRequest with a short reason that never quotes the request (a film can be megabytes).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from cxr import settings

INPUT_NAME = "image_bytes"  # the v2 input's name in the metadata, as the SavedModel's (cxr.serving.export)
OUTPUTS = {"probability": "FP32", "decision": "BYTES"}  # name -> datatype, in answer order
PLATFORM = "keras"  # v2 metadata's platform: what runs the model (tritonclient shows it; nothing dispatches on it)
V1_SHAPE = '{"instances": [{"b64": "<base64 of a JPEG or PNG>"}, ...]}'
_LENGTH = struct.Struct("<I")  # a BYTES element's length in the binary tensor extension
# RFC 2045 base64 breaks lines every 76 characters (`base64` without -w0): the breaks are not data.
_LINE_BREAKS = re.compile(r"[\r\n]")


class BadRequest(ValueError):
    """A request the server cannot answer (400); the message says why without quoting the request."""


class TooLarge(BadRequest):
    """A request larger than the server takes (413): the client should split it."""


Film = bytes | ValueError  # an encoded film, or why an instance is not one (every bad instance is named)


def model_metadata(name: str) -> dict:
    """The v2 model metadata: the input a client must send and the outputs it gets."""
    return {"name": name, "versions": [], "platform": PLATFORM,
            "inputs": [{"name": INPUT_NAME, "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": output, "datatype": datatype, "shape": [-1]}
                        for output, datatype in OUTPUTS.items()]}


def check_count(count: int) -> None:
    if count == 0:
        raise BadRequest("empty batch: send at least one film")
    if count > settings.SERVE_MAX_INSTANCES:
        raise TooLarge(f"{count} films in one request; at most {settings.SERVE_MAX_INSTANCES}: split the batch")


def from_base64(text: object, what: str) -> bytes:
    """A film from base64 text; line breaks are allowed (RFC 2045), any other character that is not base64 is
    refused."""
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a base64 string, got {type(text).__name__}")
    try:
        return base64.b64decode(_LINE_BREAKS.sub("", text), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not base64") from None


def _base64_film(value: object) -> Film:
    try:
        return from_base64(value, "each element")
    except ValueError as error:
        return error


def _json(body: bytes) -> object:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("the body is not JSON") from None


def v1_films(body: bytes) -> list[Film]:
    """The encoded films of a v1 body."""
    payload = _json(body)
    if not isinstance(payload, dict) or not isinstance(payload.get("instances"), list):
        raise BadRequest(f"expected a JSON object {V1_SHAPE}")
    instances = payload["instances"]
    check_count(len(instances))
    films: list[Film] = []
    for instance in instances:
        try:
            if not isinstance(instance, dict) or set(instance) != {"b64"}:
                raise ValueError('expected {"b64": "<base64 of a JPEG or PNG>"}')
            films.append(from_base64(instance["b64"], '"b64"'))
        except ValueError as error:
            films.append(error)
    return films


def v1_answer(probabilities: np.ndarray, decisions: Sequence[str]) -> dict:
    return {"predictions": [{"probability": float(p), "decision": d}
                            for p, d in zip(probabilities, decisions, strict=True)]}


@dataclass(frozen=True)
class V2Request:
    """A v2 inference request: its films, its id, and the outputs to answer, each with whether it goes binary."""

    films: list[Film]
    id: str | None = None
    outputs: dict[str, bool] = field(default_factory=dict)


def _split_elements(raw: bytes) -> list[bytes]:
    """A BYTES tensor in the binary extension: each element a 4-byte little-endian length, then its bytes."""
    elements, offset = [], 0
    while offset < len(raw):
        if offset + _LENGTH.size > len(raw):
            raise BadRequest("binary BYTES data ends inside an element's 4-byte length")
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += _LENGTH.size
        if offset + length > len(raw):
            raise BadRequest("binary BYTES data ends inside an element: its length says more bytes than sent")
        elements.append(raw[offset:offset + length])
        offset += length
    return elements


def _shape_count(shape: object) -> int:
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise BadRequest("the input's shape must be a list of non-negative integers, such as [2]")
    return int(np.prod(shape, dtype=np.int64))


def _flat(data: list) -> list:
    """JSON tensor data, flat or nested row-major (the protocol allows both)."""
    return [item for value in data for item in (_flat(value) if isinstance(value, list) else [value])]


def _requested_outputs(header: dict) -> dict[str, bool]:
    parameters = header.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequest('"parameters" must be a JSON object')
    binary = bool(parameters.get("binary_data_output", False))
    asked = header.get("outputs")
    if asked is None:
        return {name: binary for name in OUTPUTS}
    if not isinstance(asked, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in asked):
        raise BadRequest('"outputs" must be a list of {"name": ...}')
    unknown = [o["name"] for o in asked if o["name"] not in OUTPUTS]
    if unknown:
        raise BadRequest(f"no output named {unknown[0][:64]!r}; the outputs are {', '.join(OUTPUTS)}")
    return {o["name"]: bool((o.get("parameters") or {}).get("binary_data", binary)) for o in asked}


def v2_request(body: bytes, header_length: str | None) -> V2Request:
    """A v2 request from its body: all JSON, or (with header_length, the `Inference-Header-Content-Length`
    header) a JSON header followed by the binary tensor data."""
    binary = b""
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise BadRequest(f"Inference-Header-Content-Length must be the JSON header's length, at most the "
                             f"body's {len(body)} bytes")
        body, binary = body[:int(header_length)], body[int(header_length):]
    header = _json(body)
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise BadRequest('expected a JSON object {"inputs": [{"name": ..., "shape": [n], "datatype": "BYTES", '
                         '"data": ["<base64>", ...]}]}')
    if len(header["inputs"]) != 1 or not isinstance(header["inputs"][0], dict):
        raise BadRequest(f"expected one input ({INPUT_NAME!r}, BYTES), got {len(header['inputs'])}")
    tensor = header["inputs"][0]
    if tensor.get("datatype") != "BYTES":
        raise BadRequest(f"the input must be BYTES (encoded JPEG or PNG films), its datatype is "
                         f"{str(tensor.get('datatype'))[:32]!r}")
    count = _shape_count(tensor.get("shape"))
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size < 0 or size != len(binary):
            raise BadRequest(f"the input's binary_data_size ({str(size)[:20]}) is not the {len(binary)} bytes "
                             "after the JSON header")
        values: list = _split_elements(binary)
    else:
        if binary:
            raise BadRequest("binary data follows the JSON header but no input declares its binary_data_size")
        if not isinstance(tensor.get("data"), list):
            raise BadRequest('the input has no "data" list (nor binary data)')
        values = _flat(tensor["data"])
    if len(values) != count:
        raise BadRequest(f"the input's shape {tensor['shape']} says {count} film(s), its data holds {len(values)}")
    check_count(count)
    films = list(values) if size is not None else [_base64_film(value) for value in values]
    request_id = header.get("id")
    return V2Request(films, request_id if isinstance(request_id, str) else None, _requested_outputs(header))


def _binary(datatype: str, values: Sequence) -> bytes:
    if datatype == "FP32":
        return np.asarray(values, dtype="<f4").tobytes()
    return b"".join(_LENGTH.pack(len(v)) + v for v in (value.encode() for value in values))


def v2_answer(name: str, request: V2Request, probabilities: np.ndarray,
              decisions: Sequence[str]) -> tuple[bytes, int | None]:
    """The v2 answer's body and, when some output is binary, the JSON header's length (for
    `Inference-Header-Content-Length`)."""
    values = {"probability": [float(p) for p in np.asarray(probabilities, np.float32)], "decision": list(decisions)}
    outputs, appended = [], []
    for output, binary in request.outputs.items():
        tensor = {"name": output, "datatype": OUTPUTS[output], "shape": [len(decisions)]}
        if binary:
            appended.append(_binary(OUTPUTS[output], values[output]))
            tensor["parameters"] = {"binary_data_size": len(appended[-1])}
        else:
            tensor["data"] = values[output]
        outputs.append(tensor)
    answer = {"model_name": name, "outputs": outputs, **({"id": request.id} if request.id is not None else {})}
    header = json.dumps(answer).encode()
    return header + b"".join(appended), (len(header) if appended else None)
