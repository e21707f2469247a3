"""The pipeline as KFP sees it: the compiled YAML, and every component run through KFP's local runner."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from kfp import dsl, local
from kfp.dsl import Dataset

from components import ingest_dataset, preprocess_dataset, verdict
from cxr import settings
from pipelines.chest_xray_benchmark import YAML, chest_xray_benchmark

ROOT = Path(__file__).resolve().parents[1]


def _compile(output: Path, **env) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
    subprocess.run([sys.executable, "-m", "pipelines.chest_xray_benchmark", "--output", str(output)], cwd=ROOT,
                   env={**clean, **env}, check=True, capture_output=True)
    return output.read_text()


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict:
    # Credentials in the environment at compile time must not end up in the YAML.
    text = _compile(tmp_path_factory.mktemp("yaml") / "p.yaml", KAGGLE_USERNAME="someone",
                    KAGGLE_KEY="s3cr3t-kaggle-key", KAGGLE_API_TOKEN="s3cr3t-token")
    return {"text": text, "docs": list(yaml.safe_load_all(text))}


def test_committed_yaml_is_up_to_date(compiled):
    assert YAML.read_text() == compiled["text"], "pipelines/chest_xray_benchmark.yaml is stale: run `make compile`"


def test_no_secret_value_reaches_the_yaml(compiled):
    for value in ("s3cr3t-kaggle-key", "s3cr3t-token", "someone"):
        assert value not in compiled["text"]


def _spec(compiled) -> tuple[dict, dict]:
    pipeline, platform = compiled["docs"]
    return pipeline, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def _loop(pipeline: dict) -> tuple[dict, dict]:
    """The ParallelFor task at the root (displayed as for-each-training) and the tasks inside it."""
    name, task = next((n, t) for n, t in pipeline["root"]["dag"]["tasks"].items()
                      if t["taskInfo"]["name"] == "for-each-training")
    return task, pipeline["components"][task["componentRef"]["name"]]["dag"]["tasks"]


def test_trainings_fan_out_in_parallel_and_fan_in_at_the_root(compiled):
    pipeline, _ = _spec(compiled)
    root = pipeline["root"]
    tasks = root["dag"]["tasks"]
    loop, inner = _loop(pipeline)
    # The plan checks the names before ingest and lists one training per backbone and seed.
    assert tasks["plan-trainings"]["inputs"]["parameters"]["backbones"]["componentInputParameter"] == "backbones"
    assert tasks["ingest-dataset"]["dependentTasks"] == ["plan-trainings"]
    assert loop["parameterIterator"]["items"]["inputParameter"] == "pipelinechannel--plan-trainings-Output"
    assert loop["iteratorPolicy"]["parallelismLimit"] == settings.PARALLELISM == 5
    assert root["inputDefinitions"]["parameters"]["backbones"]["defaultValue"] == list(settings.BACKBONES)
    assert root["inputDefinitions"]["parameters"]["seeds"]["defaultValue"] == [42]
    # backbone x regime x seed: the plan takes the regimes, each training gets its own from the plan's list.
    assert root["inputDefinitions"]["parameters"]["regimes"]["defaultValue"] == ["finetune"]
    assert tasks["plan-trainings"]["inputs"]["parameters"]["regimes"]["componentInputParameter"] == "regimes"
    assert root["inputDefinitions"]["parameters"]["device"]["defaultValue"] == "gpu"
    assert set(inner) == {"train-backbone", "evaluate-backbone", "explain-backbone"}
    train_inputs = inner["train-backbone"]["inputs"]["parameters"]
    for per_run in ("backbone", "regime", "seed"):
        assert train_inputs[per_run]["componentInputParameter"] == "pipelinechannel--plan-trainings-Output-loop-item"
        assert train_inputs[per_run]["parameterExpressionSelector"] == f"parseJson(string_value)[\"{per_run}\"]"
    assert train_inputs["device"]["componentInputParameter"] == "pipelinechannel--device"
    aggregate = tasks["aggregate-results"]
    assert aggregate["taskInfo"]["name"] == "aggregate"
    for collected in ("results", "explanations", "models"):
        assert aggregate["inputs"]["artifacts"][collected]["taskOutputArtifact"]["producerTask"] == "for-loop-1"
    # No partial fan-in on KFP 2.17: the branches never fail, and a last task fails the run on what is missing.
    assert "triggerPolicy" not in compiled["text"]
    assert tasks["verdict"]["inputs"]["parameters"]["missing"]["taskOutputParameter"] == {
        "outputParameterKey": "Output", "producerTask": "aggregate-results"}


def test_train_asks_for_a_gpu_on_the_gpu_pool_and_retries(compiled):
    pipeline, executors = _spec(compiled)
    train = pipeline["deploymentSpec"]["executors"]["exec-train-backbone"]["container"]
    assert train["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert train["resources"]["accelerator"]["resourceCount"] == "1"
    assert train["image"] == settings.COMPONENT_IMAGE
    platform = executors["exec-train-backbone"]
    assert platform["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
    assert platform["tolerations"] == [{"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"}]
    assert platform["emptyDirMounts"][0]["mountPath"] == "/dev/shm"
    assert platform["pvcMount"][0]["mountPath"] == "/checkpoints"


def test_explain_and_aggregate_run_keras_on_tensorflow_whatever_the_image_trains_on(compiled):
    """Grad-CAM and the SavedModel export are TensorFlow graphs: in an image built with KERAS_BACKEND=jax, those
    two tasks must still get Keras on TensorFlow; training keeps the image's backend."""
    executors = _spec(compiled)[0]["deploymentSpec"]["executors"]
    for name in ("exec-explain-backbone", "exec-aggregate-results"):
        assert {"name": "KERAS_BACKEND", "value": "tensorflow"} in executors[name]["container"]["env"], name
    assert "env" not in executors["exec-train-backbone"]["container"]


def _retry_policies(pipeline: dict) -> dict:
    """Every task's retryPolicy, in the root DAG and in every sub-DAG, by task name."""
    dags = [pipeline["root"]["dag"]] + [c["dag"] for c in pipeline["components"].values() if "dag" in c]
    return {name: task["retryPolicy"] for dag in dags for name, task in dag["tasks"].items() if "retryPolicy" in task}


def test_train_retries_fit_kfp_2_17(compiled):
    """What KFP 2.17.0's Argo compiler turns into the train pod's retryStrategy (docs/decisions.md, "Retries")."""
    pipeline, _ = _spec(compiled)
    # Only train retries: every other task already gets the cluster's defaults, and a retry of a step that fails
    # the same way each time only costs time.
    assert set(_retry_policies(pipeline)) == {"train-backbone"}
    _, inner = _loop(pipeline)
    policy = inner["train-backbone"]["retryPolicy"]
    assert policy["maxRetryCount"] == settings.TRAIN_RETRIES == 3
    assert policy["backoffDuration"] == "0s"  # a lost pod is replaced at once; it waits for a GPU as Pending
    # Argo counts backoffMaxDuration from the first pod's start and kills a retried pod when it is reached: KFP's
    # default (3600s) would leave a training lost after its first hour without a retry.
    assert policy["backoffMaxDuration"] == "172800s"
    # The train component is a container task inside the ParallelFor's sub-DAG, the compiler path that builds a
    # retry-system-container-impl template with this policy (backend/src/v2/compiler/argocompiler/container.go).
    assert pipeline["components"][inner["train-backbone"]["componentRef"]["name"]]["executorLabel"] == \
        "exec-train-backbone"


def test_the_last_pod_records_the_failure():
    """The starts counted on the volume are used up while a pod is still left to write failure.json."""
    assert 1 <= settings.TRAIN_ATTEMPTS <= settings.TRAIN_RETRIES


def test_kaggle_credentials_reach_ingest_and_train_only_from_an_optional_secret(compiled):
    """Ingest downloads the dataset, train the keras-hub backbones' pretrained weights, both through kagglehub."""
    _, executors = _spec(compiled)
    for executor in ("exec-ingest-dataset", "exec-train-backbone"):
        secret = executors[executor]["secretAsEnv"][0]
        assert secret["secretName"] == settings.KAGGLE_SECRET and secret["optional"] is True
        assert {k["envVar"] for k in secret["keyToEnv"]} == {"KAGGLE_USERNAME", "KAGGLE_KEY"}
    assert sorted(name for name, spec in executors.items() if "secretAsEnv" in spec) == [
        "exec-ingest-dataset", "exec-train-backbone"]


def test_ingest_and_preprocess_are_cached_and_train_is_not(compiled):
    pipeline, _ = _spec(compiled)
    tasks = pipeline["root"]["dag"]["tasks"]
    assert tasks["ingest-dataset"]["cachingOptions"] == {"enableCache": True}
    assert tasks["preprocess-dataset"]["cachingOptions"] == {"enableCache": True}
    _, inner = _loop(pipeline)
    assert inner["train-backbone"]["cachingOptions"].get("enableCache", False) is False


def test_compile_time_settings_change_the_yaml(tmp_path):
    docs = list(yaml.safe_load_all(_compile(tmp_path / "p.yaml", CXR_PARALLELISM="2", CXR_IMAGE="reg.io/cxr:9",
                                            CXR_GPU_NODE_SELECTOR="cloud.google.com/gke-accelerator=nvidia-l4",
                                            CXR_CHECKPOINT_PVC="")))
    pipeline, platform = docs
    assert _loop(pipeline)[0]["iteratorPolicy"]["parallelismLimit"] == 2
    assert pipeline["deploymentSpec"]["executors"]["exec-train-backbone"]["container"]["image"] == "reg.io/cxr:9"
    train = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-train-backbone"]
    assert train["nodeSelector"]["labels"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert "pvcMount" not in train


# --- components through kfp.local -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_runner(tmp_path_factory):
    local.init(runner=local.SubprocessRunner(use_venv=False),
               pipeline_root=str(tmp_path_factory.mktemp("pipeline-root")))


def test_ingest_component(local_runner, synthetic_archive):
    task = ingest_dataset(source=str(synthetic_archive), cache="")
    raw = task.outputs["raw"]
    assert sorted(p.name for p in Path(raw.path).iterdir()) == [".cxr-lock", ".cxr-output.json", "cxr-synthetic.json",
                                                               "ingest.json", "test", "train", "val"]
    assert raw.metadata["images"] == sum(1 for _ in Path(synthetic_archive).rglob("*.jpeg"))
    assert raw.metadata["duplicates_dropped"] == 0


def test_preprocess_component(local_runner, raw_dataset):
    @dsl.pipeline
    def just_preprocess() -> Dataset:
        raw = dsl.importer(artifact_uri=str(raw_dataset), artifact_class=Dataset)
        return preprocess_dataset(raw=raw.output, image_size=32, val_fraction=0.2, split="patient",
                                  seed=1).outputs["processed"]

    processed = just_preprocess().output
    stats = json.loads((Path(processed.path) / "stats.json").read_text())
    assert processed.metadata["counts"] == stats["counts"]
    assert processed.metadata["patients_in_several_splits"] == 0 and processed.metadata["skipped"] == 0


# Slow tier: the default tier checks the compiled wiring and runs plan, ingest, preprocess, explain and verdict as
# components (here and in test_explain); the steps between are their library functions' tests.
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_one_killed_training_leaves_a_report_of_the_others_and_a_failed_run(synthetic_archive, tmp_path):
    """The whole pipeline on the local runner, in a process of its own; VGG16's training process is killed with
    SIGKILL (as the OOM killer does) while it trains. With one attempt allowed, its branch records the failure,
    the report covers MobileNet and names VGG16, and the run still ends failed. Every component runs in it: the
    train component's model artifact and checkpoints are checked here too.

    Five epochs: VGG16 is killed as soon as its first is done (the later ones take seconds each, the poll half a
    second), and MobileNet, which trains them all, stays cheap."""
    script = f"""
from kfp import local
from pipelines.chest_xray_benchmark import chest_xray_benchmark
local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root={str(tmp_path / "root")!r})
chest_xray_benchmark(source={str(synthetic_archive)!r}, backbones=["VGG16", "MobileNet"], epochs=5, batch_size=16,
                     learning_rates=[1e-3], image_size=32, weights="none", processed_image_size=32, val_fraction=0.2,
                     patience=5, device="cpu", checkpoint_root={str(tmp_path / "ckpt")!r})
"""
    env = {**os.environ, "CXR_TRAIN_ATTEMPTS": "1", "PYTHONPATH": str(ROOT)}
    run = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    killed = kill_training_when_it_trains("VGG16", tmp_path / "ckpt", timeout=300)
    output, _ = run.communicate(timeout=600)
    assert killed, output[-3000:]
    assert run.returncode != 0, "a run with a missing backbone must end as failed"
    assert "1 of 2 trainings failed" in output and "SIGKILL" in output
    leaderboard = next((tmp_path / "root").rglob("leaderboard.csv"))
    assert pd.read_csv(leaderboard)["backbone"].tolist() == ["MobileNet"]  # no ensemble of one backbone
    report = (leaderboard.parent / "report.html").read_text()
    assert '<section id="missing">' in report and "VGG16 (learning rate 0.001, seed 42) failed in train" in report
    assert "Where each backbone looks (Grad-CAM)" in report and "MobileNet_gradcam" in report
    assert "Model card" in report
    exported = next((tmp_path / "root").rglob("best_model"))
    assert (exported / "1" / "saved_model.pb").is_file()

    models = trained_models(tmp_path / "root")
    assert sorted(models) == ["MobileNet", "VGG16"] and "failure" in models["VGG16"]["metadata"]
    model = models["MobileNet"]
    assert (Path(model["uri"]) / "model.keras").is_file()
    assert model["metadata"]["backbone"] == "MobileNet" and model["metadata"]["image_size"] == 32
    assert not (Path(model["uri"]) / "checkpoint").exists()  # checkpoints stay out of the model artifact
    # One folder per run (its id comes from KFP: the same for both), in it one per training, named after the
    # backbone, the regime, the learning rate and the seed (cxr.training.plan.pipeline_checkpoint).
    checkpoints = sorted(p.relative_to(tmp_path / "ckpt") for p in (tmp_path / "ckpt").glob("*/*/state.json"))
    assert [p.parts[1:] for p in checkpoints] == [("mobilenet-finetune-lr0.001-seed42", "state.json"),
                                                 ("vgg16-finetune-lr0.001-seed42", "state.json")]
    assert checkpoints[0].parts[0] == checkpoints[1].parts[0]


@pytest.mark.slow  # the default tier checks the plan, the wiring (test_options) and the choice (test_tuning)
@pytest.mark.timeout(1200)
def test_two_learning_rates_and_two_seeds_give_one_ranked_row_at_the_rate_chosen_on_validation(synthetic_archive,
                                                                                                 tmp_path):
    """The whole pipeline on the local runner, MobileNet frozen (one feature extraction for the four trainings) at
    two learning rates and two seeds: one leaderboard row at the chosen rate, every candidate in tuning.csv and
    the graph, one checkpoint per training."""
    script = f"""
from kfp import local
from pipelines.chest_xray_benchmark import chest_xray_benchmark
local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root={str(tmp_path / "root")!r})
chest_xray_benchmark(source={str(synthetic_archive)!r}, backbones=["MobileNet"], regimes=["frozen"],
                     learning_rates=[1e-2, 1e-4], seeds=[1, 2], epochs=1, batch_size=16, image_size=32,
                     weights="none", processed_image_size=32, val_fraction=0.2, device="cpu", explain_films=2,
                     checkpoint_root={str(tmp_path / "ckpt")!r})
"""
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=1100)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    report = next((tmp_path / "root").rglob("leaderboard.csv")).parent
    candidates = pd.read_csv(report / "tuning.csv")
    assert sorted(candidates["learning_rate"]) == [1e-4, 1e-2] and (candidates["seeds"] == 2).all()
    best = candidates.sort_values(["val_roc_auc", "learning_rate"], ascending=[False, True]).iloc[0]
    assert candidates.loc[candidates["chosen"], "learning_rate"].tolist() == [best["learning_rate"]]
    board = pd.read_csv(report / "leaderboard.csv")
    assert board[["backbone", "regime"]].values.tolist() == [["MobileNet", "frozen"]]
    assert (board.loc[0, "learning_rate"], board.loc[0, "candidates"], board.loc[0, "seeds"]) == (
        best["learning_rate"], 2, 2)
    assert (report / "learning_rate_search.png").is_file()
    assert "Equal tuning budgets" in (report / "report.html").read_text()
    trainings = sorted(p.parent.name for p in (tmp_path / "ckpt").glob("*/*/state.json"))
    assert trainings == [f"mobilenet-frozen-lr{rate}-seed{seed}" for rate in ("0.0001", "0.01") for seed in (1, 2)]


def trained_models(pipeline_root: Path) -> dict[str, dict]:
    """backbone -> the train tasks' `model` output artifact ({"uri", "metadata", ...}), read from the executor
    outputs kfp.local leaves in each task's folder."""
    models = {}
    for output in pipeline_root.rglob("executor_output.json"):
        for artifact in json.loads(output.read_text()).get("artifacts", {}).get("model", {}).get("artifacts", []):
            models[artifact["metadata"]["backbone"]] = artifact
    return models


def kill_training_when_it_trains(backbone: str, checkpoints: Path, timeout: float) -> bool:
    """SIGKILL the training child of `backbone` (the process the OOM killer picks: the one holding TensorFlow)
    once it has finished an epoch; True when it was killed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if list(checkpoints.glob(f"*/{backbone.lower()}-*-seed*/state.json")):
            for pid in os.listdir("/proc"):
                try:
                    command = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
                except (FileNotFoundError, PermissionError, NotADirectoryError):
                    continue
                if "\0-m\0cxr.training.supervise\0" in command and f'"backbone": "{backbone}"' in command:
                    os.kill(int(pid), signal.SIGKILL)
                    return True
        time.sleep(0.5)
    return False


def test_the_verdict_passes_a_complete_run_and_fails_a_partial_one(local_runner):
    verdict(missing="")  # returns: nothing missing
    with pytest.raises(RuntimeError):
        verdict(missing="1 of 5 trainings failed: VGG16 (seed 42) failed in train: killed")


@pytest.mark.parametrize("bad", [
    {"backbones": ["MobileNet", "mobilenet"]},  # listed twice, in another case
    {"learning_rates": [1e-3, 1e-3]}, {"learning_rates": [0.0]}, {"learning_rates": []},
    {"regimes": ["frozen", "linear"]}, {"regimes": ["frozen", "frozen"]},
    {"heads": ["linear", "Linear"]}, {"heads": ["knn"]},  # knn alone in the fine-tuned regime: nothing to plan
])
def test_a_bad_list_parameter_is_refused_before_ingest(local_runner, synthetic_archive, tmp_path, bad):
    root = Path(local.config.LocalExecutionConfig.instance.pipeline_root)
    ingested_before = set(root.rglob("ingest.json"))
    with pytest.raises(RuntimeError):
        chest_xray_benchmark(source=str(synthetic_archive), **{"backbones": ["MobileNet"], **bad}, device="cpu",
                             checkpoint_root=str(tmp_path / "ckpt"))
    assert set(root.rglob("ingest.json")) == ingested_before  # ingest never ran
