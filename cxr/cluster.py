"""Submitting to a Kubeflow Pipelines endpoint, and the cluster checks around it (`make run`, `make upload`).

The KFP calls go through kfp.Client (its v2beta1 REST API); the readiness checks and the Kaggle secret through
the kubernetes client. Unreachable endpoints end in one UserError line that says what to check.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import time
import urllib.parse
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


def shown(host: str) -> str:
    """`host` as it may be printed: a user name stays, a password in the URL (http://user:PASSWORD@...) does not."""
    parts = urllib.parse.urlsplit(host)
    if parts.password is None:
        return host
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _client(host: str):
    import kfp

    return _call(host, "connect", lambda: kfp.Client(host=host))


def _call(host: str, what: str, action):
    """Run one KFP call; connection failures and API errors become one clear line. What kfp.Client prints itself
    ("Run details: URL", with the host as given, a password too) is swallowed: submit prints the URL itself."""
    import urllib3
    from kfp_server_api.exceptions import ApiException

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return action()
    except (urllib3.exceptions.HTTPError, ConnectionError) as error:
        raise UserError(f"KFP at {shown(host)} is unreachable while trying to {what} ({type(error).__name__}); is "
                        "`make ui` (port-forward) running, or KFP_HOST right?") from None
    except ApiException as error:
        raise UserError(f"KFP at {shown(host)} refused to {what}: HTTP {error.status} {error.reason}") from None


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
    return f"{shown(host).rstrip('/')}/#/runs/details/{run_id}"


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


# Seconds one Kubernetes API call may take: an API that accepts connections but never answers must not hang a wait.
KUBERNETES_REQUEST_SECONDS = 10
GPU_RESOURCE = "nvidia.com/gpu"  # the device plugin's resource, which the train tasks ask for
GPU_CHECK_POD = "cxr-gpu-check-"  # name prefix of the short pod `cxr cluster-ready` runs on the GPU node
# Container states in which the GPU check pod will never start by itself.
STUCK_REASONS = ("ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName",
                 "CreateContainerConfigError", "CreateContainerError", "RunContainerError")
RUNTIME_HINT = ("the NVIDIA runtime is likely not containerd's default on the GPU node: recreate the cluster with "
                "`make down cluster load deploy` (README, The cluster path)")
NO_GPU_NODE = f"a node with an allocatable {GPU_RESOURCE} (the NVIDIA device plugin)"


def _kubernetes():
    from kubernetes import client, config

    try:
        # KUBECONFIG as it is now: the client reads its default path from it once, when it is imported.
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
    except Exception:  # any failure here means the same to the user
        raise UserError("no usable kubeconfig: create the cluster first (`make cluster`) or point "
                        "KUBECONFIG at one") from None
    return client


def _unreachable() -> tuple[type[Exception], ...]:
    """What the kubernetes client raises when the API server cannot be reached (refused, reset, timed out)."""
    import urllib3

    return urllib3.exceptions.HTTPError, OSError


def _unreachable_line(client, error: Exception) -> str:
    host = client.Configuration.get_default_copy().host
    return (f"the Kubernetes API at {host} is unreachable ({type(error).__name__}); is the cluster running "
            "(`kind get clusters`, `make cluster`) and KUBECONFIG right?")


def _refused_line(error) -> str:
    return f"the Kubernetes API refused a call: HTTP {error.status} {error.reason}"


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
    timeout = KUBERNETES_REQUEST_SECONDS
    try:
        try:
            api.replace_namespaced_secret(settings.KAGGLE_SECRET, namespace, body, _request_timeout=timeout)
        except client.exceptions.ApiException as error:
            if error.status != 404:
                raise
            api.create_namespaced_secret(namespace, body, _request_timeout=timeout)
    except client.exceptions.ApiException as error:  # status and reason only: the body echoes the secret
        raise UserError(f"could not write secret {namespace}/{settings.KAGGLE_SECRET}: HTTP {error.status} "
                        f"{error.reason} (does namespace {namespace} exist?)") from None
    except _unreachable() as error:
        raise UserError(_unreachable_line(client, error)) from None
    print(f"secret: {namespace}/{settings.KAGGLE_SECRET} holds KAGGLE_USERNAME and KAGGLE_KEY")
    return True


def _not_ready(apps, core, namespace: str, need_gpu: bool) -> list[str]:
    """What the cluster still lacks: unavailable Deployments in `namespace` and, with `need_gpu`, a node that
    offers an nvidia.com/gpu."""
    timeout = KUBERNETES_REQUEST_SECONDS
    deployments = apps.list_namespaced_deployment(namespace, _request_timeout=timeout).items
    waiting_for = [f"deployment {d.metadata.name}" for d in deployments
                   if (d.status.available_replicas or 0) < (d.spec.replicas or 1)]
    if not deployments:
        waiting_for = [f"deployments in namespace {namespace}"]
    if need_gpu and not any(int((n.status.allocatable or {}).get(GPU_RESOURCE, "0")) > 0
                            for n in core.list_node(_request_timeout=timeout).items):
        waiting_for.append(NO_GPU_NODE)
    return waiting_for


def gpu_check_pod(client, image: str):
    """The pod that runs `cxr gpus` where the train tasks run: the GPU node pool's selector and toleration and
    one GPU, as the pipeline's train tasks ask for them (pipelines/chest_xray_benchmark.py, on_gpu_node)."""
    key, _, value = settings.GPU_NODE_SELECTOR.partition("=")
    container = client.V1Container(
        name="gpus", image=image, image_pull_policy="IfNotPresent", command=["cxr", "gpus"],
        resources=client.V1ResourceRequirements(limits={GPU_RESOURCE: "1"}))
    return client.V1Pod(
        metadata=client.V1ObjectMeta(generate_name=GPU_CHECK_POD, labels={"app.kubernetes.io/part-of": "cxr-bench"}),
        spec=client.V1PodSpec(
            restart_policy="Never", containers=[container], node_selector={key: value},
            tolerations=[client.V1Toleration(key=settings.GPU_TOLERATION_KEY, operator="Exists",
                                             effect="NoSchedule")]))


def _pending_reason(pod) -> str:
    """Why a pod has not ended yet, in the words of its container state or its scheduling condition."""
    for status in pod.status.container_statuses or []:
        if status.state and status.state.waiting and status.state.waiting.reason:
            return status.state.waiting.reason
    for condition in pod.status.conditions or []:
        if condition.status == "False" and condition.reason:
            return f"{condition.reason}: {condition.message or ''}".strip()
    return pod.status.phase or "Pending"


def check_gpu_in_pod(client, namespace: str, image: str, deadline: float, poll_seconds: float) -> list[str]:
    """Run `cxr gpus` in a short pod on the GPU node and return the GPU lines it printed. The pod is deleted
    whatever happens. A node can offer nvidia.com/gpu (the device plugin) while its containers still see no
    GPU: that is what this catches, before train tasks run for hours on the CPU."""
    core = client.CoreV1Api()
    timeout = KUBERNETES_REQUEST_SECONDS
    name = core.create_namespaced_pod(namespace, gpu_check_pod(client, image), _request_timeout=timeout).metadata.name
    try:
        while True:
            pod = core.read_namespaced_pod(name, namespace, _request_timeout=timeout)
            if pod.status.phase in ("Succeeded", "Failed"):
                break
            reason = _pending_reason(pod)
            if reason in STUCK_REASONS:
                raise UserError(f"the GPU check pod {namespace}/{name} cannot start ({reason}) with image {image}: "
                                "`make images load`, or pass --image")
            if time.monotonic() >= deadline:
                raise UserError(f"the GPU check pod {namespace}/{name} did not finish in time ({reason})")
            print(f"waiting for the GPU check pod {name}: {reason}", file=sys.stderr, flush=True)
            time.sleep(max(0.0, min(poll_seconds, deadline - time.monotonic())))
        log = core.read_namespaced_pod_log(name, namespace, container="gpus", _request_timeout=timeout) or ""
    finally:
        try:
            core.delete_namespaced_pod(name, namespace, grace_period_seconds=0, _request_timeout=timeout)
        except (client.exceptions.ApiException, *_unreachable()) as error:
            print(f"could not delete pod {namespace}/{name} ({type(error).__name__}): `kubectl -n {namespace} "
                  f"delete pod {name}`", file=sys.stderr)
    gpus = [line.strip() for line in log.splitlines() if line.startswith("GPU ")]
    if pod.status.phase != "Succeeded" or not gpus:
        said = next((line.strip() for line in reversed(log.splitlines()) if line.strip()), "no output")
        raise UserError(f"a pod on the GPU node ({settings.GPU_NODE_SELECTOR}) sees no GPU (`cxr gpus` "
                        f"{pod.status.phase}: {said}); {RUNTIME_HINT}")
    return gpus


def wait_until_ready(namespace: str = "kubeflow", timeout_seconds: float = 900, need_gpu: bool = True,
                     image: str = settings.COMPONENT_IMAGE, poll_seconds: float = 10) -> None:
    """Wait until every Deployment in `namespace` is available and (with `need_gpu`) a node offers an
    nvidia.com/gpu, saying what it still waits for, then (with `need_gpu`) check that a container on that node
    sees the GPU. An unreachable API is waited for too, until the timeout."""
    client = _kubernetes()
    apps, core = client.AppsV1Api(), client.CoreV1Api()
    deadline = time.monotonic() + timeout_seconds
    while True:
        try:
            waiting_for = _not_ready(apps, core, namespace, need_gpu)
        except _unreachable() as error:
            waiting_for = [_unreachable_line(client, error)]
        except client.exceptions.ApiException as error:
            if error.status < 500:  # a refusal (401, 403) does not pass by waiting; a starting API answers 5xx
                raise UserError(_refused_line(error)) from None
            waiting_for = [f"the Kubernetes API (HTTP {error.status} {error.reason})"]
        if not waiting_for:
            break
        if time.monotonic() >= deadline:
            gpu_missing = NO_GPU_NODE in waiting_for
            raise UserError(f"not ready after {timeout_seconds:g} s; still waiting for: {', '.join(waiting_for)}"
                            + (f"; if the device plugin pod (`kubectl -n nvidia get pods`) is in CrashLoopBackOff "
                               f"with an NVML error, {RUNTIME_HINT}" if gpu_missing else ""))
        print(f"waiting for {len(waiting_for)}: {', '.join(waiting_for[:4])}"
              + (" ..." if len(waiting_for) > 4 else ""), file=sys.stderr, flush=True)
        time.sleep(max(0.0, min(poll_seconds, deadline - time.monotonic())))
    gpus = []
    if need_gpu:
        try:
            gpus = check_gpu_in_pod(client, namespace, image, deadline, poll_seconds)
        except _unreachable() as error:
            raise UserError(_unreachable_line(client, error)) from None
        except client.exceptions.ApiException as error:
            raise UserError(_refused_line(error)) from None
    print(f"ready: every deployment in {namespace} is available"
          + (f"; a pod on the GPU node sees {', '.join(gpus)}" if gpus else ""))
