"""`cxr serve` under load on loopback, against in-process prediction of the same films in the same run.

    python benchmarks/serve_load.py --model DIR [--clients 8] [--requests 200] [--batches 1 16] [--height 1500]
                                    [--seconds 60]

Starts `cxr serve` on a free 127.0.0.1 port and, once it is ready, for each batch size (films per request):

- the baseline, one process doing what the server does for a request without HTTP (decode, one batch through the
  model, the decision: cxr.serving.trained, as `cxr predict`), one request after another;
- N client threads sending v2 requests over keep-alive connections, the films as base64 JSON, then the same
  films in the binary tensor extension (tritonclient's default), with binary outputs.

Prints, per phase, requests/s, films/s, p50/p95/p99 latency, errors, and the server's peak memory during the phase
(VmHWM of /proc/PID/status, reset before each phase through /proc/PID/clear_refs), then each HTTP phase's films/s
as a ratio of the baseline's. Bounded: at most --requests per phase and --seconds per phase (a request under way
still finishes, within REQUEST_TIMEOUT). The start-up (TensorFlow's import and the model's load) comes before,
limited to START_TIMEOUT. Exit 1 when a request failed.

Films are synthetic (cxr.data.synth) JPEGs at the archive's resolution: each request decodes full-size films.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import requests

from cxr.data.synth import draw_film, encode_film
from cxr.serving.trained import decide, decode_bytes, load_model, probabilities_of, read_preprocessing

NAME = "load"
REQUEST_TIMEOUT = 60  # seconds a client waits for one answer; longer is an error
START_TIMEOUT = 300  # seconds for the server to become ready


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def peak_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM back to the current resident size


def summary(label: str, latencies: list[float], seconds: float, films_per_request: int, errors: int | None,
            peak: float | None) -> str:
    ms = np.percentile(np.asarray(latencies) * 1000, [50, 95, 99]) if latencies else [float("nan")] * 3
    rate = len(latencies) / seconds if seconds > 0 else float("nan")
    return (f"{label:<34} {len(latencies):4d} requests in {seconds:5.1f} s: {rate:6.1f} requests/s "
            f"({rate * films_per_request:6.1f} films/s); p50 {ms[0]:7.1f} ms, p95 {ms[1]:7.1f} ms, "
            f"p99 {ms[2]:7.1f} ms" + ("" if errors is None else f"; errors {errors}")
            + ("" if peak is None else f"; server peak {peak:.0f} MB"))


def json_body(films: list[bytes]) -> tuple[bytes, dict]:
    body = {"inputs": [{"name": "image_bytes", "shape": [len(films)], "datatype": "BYTES",
                        "data": [base64.b64encode(f).decode() for f in films]}]}
    return json.dumps(body).encode(), {"Content-Type": "application/json"}


def binary_body(films: list[bytes]) -> tuple[bytes, dict]:
    raw = b"".join(struct.pack("<I", len(f)) + f for f in films)
    header = json.dumps({"inputs": [{"name": "image_bytes", "shape": [len(films)], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(raw)}}],
                         "parameters": {"binary_data_output": True}}).encode()
    return header + raw, {"Inference-Header-Content-Length": str(len(header))}


def start_server(model: Path, port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [str(Path(sys.executable).with_name("cxr")), "serve", "--model", str(model), "--threshold", "0.5",
         "--name", NAME, "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_until_ready(process: subprocess.Popen, port: int, deadline: float) -> None:
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if requests.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2).status_code == 200:
                return
        except (requests.ConnectionError, requests.Timeout):
            time.sleep(0.3)
    process.kill()
    raise SystemExit(f"serve_load: cxr serve was not ready within {START_TIMEOUT} s (exit {process.poll()})")


def in_process(model, prep, bodies: list[list[bytes]], deadline: float) -> tuple[list[float], float]:
    """The server's work per request without HTTP: decode, one batch, the decision."""
    latencies, started = [], time.perf_counter()
    for films in bodies:
        if time.monotonic() >= deadline:
            break
        begun = time.perf_counter()
        pixels = [decode_bytes(film, prep) for film in films]
        decide(probabilities_of(model, pixels, len(pixels)), 0.5)
        latencies.append(time.perf_counter() - begun)
    return latencies, time.perf_counter() - started


def over_http(url: str, payloads: list[tuple[bytes, dict]], clients: int,
              deadline: float) -> tuple[list[float], float, int]:
    """`clients` threads, each with its own keep-alive session, taking the next request until none is left."""
    latencies, errors, lock, queue = [], [0], threading.Lock(), itertools.count()

    def client() -> None:
        with requests.Session() as session:
            while time.monotonic() < deadline:
                index = next(queue)
                if index >= len(payloads):
                    return
                begun = time.perf_counter()
                try:
                    body, headers = payloads[index]
                    ok = session.post(url, data=body, headers=headers, timeout=REQUEST_TIMEOUT).status_code == 200
                except requests.RequestException:
                    ok = False
                with lock:
                    if ok:
                        latencies.append(time.perf_counter() - begun)
                    else:
                        errors[0] += 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, time.perf_counter() - started, errors[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, type=Path, help="a `cxr train` folder")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=200, help="at most, per phase")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16], help="films per request, one run each")
    parser.add_argument("--height", type=int, default=1500, help="film height in pixels (archive: 1000-2500)")
    parser.add_argument("--seconds", type=float, default=60, help="at most, per phase")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    rng = np.random.default_rng(0)
    distinct = [encode_film(draw_film(rng, kind), args.height, rgb=False) for kind in ("normal", "bacteria", "virus")
                for _ in range(4)]
    port, started = free_port(), time.monotonic()
    server = start_server(args.model, port)
    failed = 0
    try:
        # The baseline's model loads while the server starts.
        prep, model = read_preprocessing(args.model), load_model(args.model)
        probabilities_of(model, [decode_bytes(distinct[0], prep)], 1)  # traced before timing, as the server does
        wait_until_ready(server, port, started + START_TIMEOUT)
        print(f"serve_load: {args.model} ({prep.image_size} px input) on 127.0.0.1:{port}, ready "
              f"{time.monotonic() - started:.1f} s after start; films {args.height} px JPEG, mean "
              f"{np.mean([len(f) for f in distinct]) / 1000:.0f} KB; {args.clients} clients; {os.cpu_count()} CPU "
              f"cores shared by server, clients and baseline (load average {os.getloadavg()[0]:.1f}); server at "
              f"{peak_mb(server.pid):.0f} MB after start-up")
        url = f"http://127.0.0.1:{port}/v2/models/{NAME}/infer"
        for per_request in args.batches:
            bodies = [[distinct[(i * per_request + j) % len(distinct)] for j in range(per_request)]
                      for i in range(args.requests)]
            baseline, baseline_seconds = in_process(model, prep, bodies, time.monotonic() + args.seconds)
            print(summary(f"in-process, {per_request} film(s)", baseline, baseline_seconds, per_request, None, None))
            encodings: dict[str, Callable] = {"JSON (base64)": json_body, "binary extension": binary_body}
            for label, encode in encodings.items():
                payloads = [encode(films) for films in bodies]
                reset_peak(server.pid)
                served, seconds, errors = over_http(url, payloads, args.clients, time.monotonic() + args.seconds)
                failed += errors
                print(summary(f"cxr serve, {per_request} film(s), {label}", served, seconds, per_request, errors,
                              peak_mb(server.pid)))
                if baseline and served:
                    print(f"  ratio: {(len(served) / seconds) / (len(baseline) / baseline_seconds):.2f}x the "
                          f"in-process films/s; p50 latency {np.median(served) / np.median(baseline):.2f}x")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    if failed:
        print(f"serve_load: {failed} request(s) failed", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
