"""`cxr serve` under load on loopback, against in-process prediction of the same films in the same run.

    python benchmarks/serve_load.py --model DIR [--clients 4] [--requests 200] [--films-per-request 1]
                                    [--height 1500] [--seconds 60]

Starts `cxr serve` on a free 127.0.0.1 port and, once it is ready, measures two things on the same request
bodies: the baseline, one process doing what the server does for a request without HTTP (decode, one batch
through the model, the decision: cxr.serving.trained, as `cxr predict`), one request after another; then N
client threads sending v1 requests over keep-alive connections. Prints the server's start-up time, then
requests/s, films/s, p50/p95/p99 latency and errors (exit 1 unless 0). Bounded twice: at most --requests per
phase, and both phases together send nothing new --seconds after the server is ready (the baseline has at most
half of it; a request under way still finishes, within REQUEST_TIMEOUT). The start-up (TensorFlow's import and
the model's load, 20-40 s on the development machine) comes before, limited to START_TIMEOUT.

Films are synthetic (cxr.data.synth) JPEGs at the archive's resolution: each request decodes full-size films.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import requests

from cxr.data.synth import draw_film, encode_film
from cxr.serving.trained import decide, decode_bytes, load_model, probabilities_of, read_preprocessing

NAME = "load"
REQUEST_TIMEOUT = 30  # seconds a client waits for one answer; longer is an error
START_TIMEOUT = 180  # seconds for the server to become ready


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def summary(label: str, latencies: list[float], seconds: float, films_per_request: int, errors: int | None) -> str:
    ms = np.percentile(np.asarray(latencies) * 1000, [50, 95, 99]) if latencies else [float("nan")] * 3
    rate = len(latencies) / seconds if seconds > 0 else float("nan")
    return (f"{label:<22} {len(latencies):5d} requests in {seconds:6.1f} s: {rate:7.1f} requests/s "
            f"({rate * films_per_request:7.1f} films/s); latency p50 {ms[0]:7.1f} ms, p95 {ms[1]:7.1f} ms, "
            f"p99 {ms[2]:7.1f} ms" + ("" if errors is None else f"; errors {errors}"))


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
    probabilities_of(model, [decode_bytes(bodies[0][0], prep)], 1)  # traced before timing, as the server does
    latencies, started = [], time.perf_counter()
    for films in bodies:
        if time.monotonic() >= deadline:
            break
        begun = time.perf_counter()
        pixels = [decode_bytes(film, prep) for film in films]
        decide(probabilities_of(model, pixels, len(pixels)), 0.5)
        latencies.append(time.perf_counter() - begun)
    return latencies, time.perf_counter() - started


def over_http(url: str, payloads: list[bytes], clients: int, deadline: float) -> tuple[list[float], float, int]:
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
                    response = session.post(url, data=payloads[index], timeout=REQUEST_TIMEOUT,
                                            headers={"Content-Type": "application/json"})
                    ok = response.status_code == 200
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
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=200, help="per phase")
    parser.add_argument("--films-per-request", type=int, default=1)
    parser.add_argument("--height", type=int, default=1500, help="film height in pixels (archive: 1000-2500)")
    parser.add_argument("--seconds", type=float, default=60,
                        help="both measured phases end within this, after the start-up")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    rng = np.random.default_rng(0)
    distinct = [encode_film(draw_film(rng, kind), args.height, rgb=False) for kind in ("normal", "bacteria", "virus")
                for _ in range(4)]
    bodies = [[distinct[(i * args.films_per_request + j) % len(distinct)] for j in range(args.films_per_request)]
              for i in range(args.requests)]
    payloads = [json.dumps({"instances": [{"b64": base64.b64encode(f).decode()} for f in films]}).encode()
                for films in bodies]
    port, started = free_port(), time.monotonic()
    server = start_server(args.model, port)
    try:
        # The baseline's model loads while the server starts: both within the time limit.
        prep, model = read_preprocessing(args.model), load_model(args.model)
        wait_until_ready(server, port, started + START_TIMEOUT)
        ready = time.monotonic()
        print(f"serve_load: {args.model} on 127.0.0.1:{port}, ready {ready - started:.1f} s after "
              f"start; {args.requests} requests of {args.films_per_request} film(s) ({args.height} px JPEG, mean "
              f"{np.mean([len(f) for f in distinct]) / 1000:.0f} KB); {args.clients} clients; {os.cpu_count()} "
              f"CPU cores shared by server, clients and baseline (load average {os.getloadavg()[0]:.1f})")
        baseline, baseline_seconds = in_process(model, prep, bodies, ready + args.seconds / 2)
        print(summary("in-process predict", baseline, baseline_seconds, args.films_per_request, None))
        served, served_seconds, errors = over_http(f"http://127.0.0.1:{port}/v1/models/{NAME}:predict", payloads,
                                                   args.clients, ready + args.seconds)
        print(summary(f"cxr serve, {args.clients} clients", served, served_seconds, args.films_per_request, errors))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    if baseline and served:
        ratio = (len(served) / served_seconds) / (len(baseline) / baseline_seconds)
        print(f"ratio: cxr serve gives {ratio:.2f}x the in-process requests/s; p50 latency "
              f"{np.median(served) / np.median(baseline):.2f}x")
    for label, done in (("in-process", len(baseline)), ("cxr serve", len(served) + errors)):
        if done < args.requests:
            print(f"serve_load: {label}: {args.requests - done} of {args.requests} request(s) not sent within "
                  f"--seconds {args.seconds:g}")
    if errors:
        print(f"serve_load: {errors} request(s) failed", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
