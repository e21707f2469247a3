"""Submitting to a Kubeflow Pipelines endpoint, and the cluster checks around it (`make run`, `make upload`).

The KFP calls go through kfp.Client (its v2beta1 REST API); the readiness checks and the Kaggle secret through
the kubernetes client. Unreachable endpoints end in one UserError line that says what to check.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cxr import settings
from cxr.errors import UserError

KAGGLE_ENV = ("KAGGLE_USERNAME", "KAGGLE_KEY")


@dataclass(frozen=True)
class RunOutcome:
    run_id: str
    url: str
    state: str


def _client(host: str):
    import kfp

    return _call(host, "connect", lambda: kfp.Client(host=host))


def _call(host: str, what: str, action):
    """Run one KFP call; connection failures and API errors become one clear line."""
    import urllib3
    from kfp_server_api.exceptions import ApiException

    try:
        return action()
    except (urllib3.exceptions.HTTPError, ConnectionError) as error:
        raise UserError(f"KFP at {host} is unreachable while trying to {what} ({type(error).__name__}); is "
                        "`make ui` (port-forward) running, or KFP_HOST right?") from None
    except ApiException as error:
        raise UserError(f"KFP at {host} refused to {what}: HTTP {error.status} {error.reason}") from None


def parse_arguments(pairs: list[str]) -> dict[str, object]:
    """NAME=VALUE pipeline arguments; VALUE as JSON where it parses (numbers, lists), else as a string."""
    import json

    arguments: dict[str, object] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise UserError(f"pipeline argument {pair!r} is not NAME=VALUE")
        try:
            arguments[name] = json.loads(value)
        except json.JSONDecodeError:
            arguments[name] = value
    return arguments


def run_url(host: str, run_id: str) -> str:
    return f"{host.rstrip('/')}/#/runs/details/{run_id}"


def submit(host: str, package: Path, arguments: dict, experiment: str, wait: bool = True,
           timeout_seconds: int = 6 * 3600, poll_seconds: float = 10) -> RunOutcome:
    """Submit the compiled pipeline as a run; with `wait`, poll until it ends and return its final state."""
    if not Path(package).is_file():
        raise UserError(f"{package} does not exist (run `make compile`)")
    client = _client(host)
    run = _call(host, "create the run", lambda: client.create_run_from_pipeline_package(
        str(package), arguments=arguments, experiment_name=experiment,
        run_name=f"{settings.PIPELINE_NAME}-{time.strftime('%Y%m%d-%H%M%S')}"))
    url = run_url(host, run.run_id)
    print(f"run: submitted {run.run_id}\nrun: {url}", flush=True)
    if not wait:
        return RunOutcome(run.run_id, url, "SUBMITTED")
    detail = _call(host, "follow the run",
                   lambda: client.wait_for_run_completion(run.run_id, timeout=timeout_seconds,
                                                         sleep_duration=poll_seconds))
    state = str(detail.state)
    print(f"run: finished {state}", flush=True)
    return RunOutcome(run.run_id, url, state)


def upload(host: str, package: Path, pipeline_name: str = settings.PIPELINE_NAME) -> str:
    """Upload the YAML as a new version of the pipeline (creating the pipeline the first time); returns the
    version's name, shown in the KFP UI's pipeline list."""
    if not Path(package).is_file():
        raise UserError(f"{package} does not exist (run `make compile`)")
    client = _client(host)
    version = f"{settings.VERSION}-{time.strftime('%Y%m%d-%H%M%S')}"
    pipeline_id = _call(host, "look up the pipeline", lambda: client.get_pipeline_id(pipeline_name))
    if pipeline_id is None:
        _call(host, "upload the pipeline", lambda: client.upload_pipeline(
            str(package), pipeline_name=pipeline_name,
            description="Five ImageNet CNNs on chest X-rays, compared fairly (cxr-bench)"))
        print(f"upload: created pipeline {pipeline_name}")
        return pipeline_name
    _call(host, "upload the pipeline version", lambda: client.upload_pipeline_version(
        str(package), pipeline_version_name=version, pipeline_id=pipeline_id))
    print(f"upload: pipeline {pipeline_name}, new version {version}")
    return version


def _kubernetes():
    from kubernetes import client, config

    try:
        config.load_kube_config()
    except Exception:  # any failure here means the same to the user
        raise UserError("no usable kubeconfig: create the cluster first (`make cluster`) or point "
                        "KUBECONFIG at one") from None
    return client


def create_kaggle_secret(namespace: str = "kubeflow") -> bool:
    """Create or replace the optional Kaggle Secret from KAGGLE_USERNAME and KAGGLE_KEY in the environment.
    Returns False (and changes nothing) when they are not set. The values are never printed."""
    values = {name: os.environ.get(name, "") for name in KAGGLE_ENV}
    if not all(values.values()):
        print(f"secret: {' and '.join(KAGGLE_ENV)} not set; skipping {settings.KAGGLE_SECRET} "
              "(ingest from a folder, .zip or gs:// works without it)")
        return False
    client = _kubernetes()
    body = client.V1Secret(metadata=client.V1ObjectMeta(name=settings.KAGGLE_SECRET, namespace=namespace),
                           string_data=values, type="Opaque")
    api = client.CoreV1Api()
    try:
        api.replace_namespaced_secret(settings.KAGGLE_SECRET, namespace, body)
    except client.exceptions.ApiException as error:
        if error.status != 404:
            raise UserError(f"could not write secret {namespace}/{settings.KAGGLE_SECRET}: HTTP {error.status}") \
                from None
        api.create_namespaced_secret(namespace, body)
    print(f"secret: {namespace}/{settings.KAGGLE_SECRET} holds KAGGLE_USERNAME and KAGGLE_KEY")
    return True


def wait_until_ready(namespace: str = "kubeflow", timeout_seconds: int = 900, need_gpu: bool = True) -> None:
    """Wait until every Deployment in `namespace` is available and (with `need_gpu`) a node offers an
    nvidia.com/gpu, saying what it still waits for."""
    client = _kubernetes()
    apps, core = client.AppsV1Api(), client.CoreV1Api()
    deadline = time.monotonic() + timeout_seconds
    waiting_for = ["?"]
    while time.monotonic() < deadline:
        deployments = apps.list_namespaced_deployment(namespace).items
        waiting_for = [f"deployment {d.metadata.name}" for d in deployments
                       if (d.status.available_replicas or 0) < (d.spec.replicas or 1)]
        if not deployments:
            waiting_for = [f"deployments in namespace {namespace}"]
        if need_gpu and not any(int((n.status.allocatable or {}).get("nvidia.com/gpu", "0")) > 0
                                for n in core.list_node().items):
            waiting_for.append("a node with an allocatable nvidia.com/gpu (the NVIDIA device plugin)")
        if not waiting_for:
            print(f"ready: every deployment in {namespace} is available" + (", GPU visible" if need_gpu else ""))
            return
        print(f"waiting for {len(waiting_for)}: {', '.join(waiting_for[:4])}"
              + (" ..." if len(waiting_for) > 4 else ""), file=sys.stderr, flush=True)
        time.sleep(10)
    raise UserError(f"not ready after {timeout_seconds} s; still waiting for: {', '.join(waiting_for)}")
