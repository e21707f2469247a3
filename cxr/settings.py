"""Every default of the project, in one place, each with where it comes from.

The CLI, the KFP components and the pipeline read their defaults from here; nothing else hard-codes them.
"""

from __future__ import annotations

import importlib.metadata
import os
import tomllib
from collections.abc import Callable
from pathlib import Path

from cxr.errors import UserError

# --- Settings read from the environment ---------------------------------------------------------------------

# A value that cannot be used is recorded here, its default used meanwhile, and check_environment() names it in
# one line when a command starts: an exception at import would be a traceback before the CLI can say anything.
_ENVIRONMENT_PROBLEMS: list[str] = []


def _from_environment(name: str, default: str, parse: Callable[[str], object], expected: str):
    text = os.environ.get(name)
    if text is None:
        return parse(default)
    try:
        return parse(text)
    except ValueError:
        _ENVIRONMENT_PROBLEMS.append(f"{name}={text!r}: expected {expected}")
        return parse(default)


def _whole_number_from(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise ValueError(text)
        return value
    return parse


def check_environment() -> None:
    """Refuse, in one line naming the variable, an environment setting cxr reads but cannot use: CXR_* values
    and KERAS_BACKEND (Keras itself fails with a traceback on a backend that is unknown or not installed)."""
    keras_backend = os.environ.get("KERAS_BACKEND")
    if keras_backend is not None and keras_backend not in KERAS_BACKENDS:
        raise UserError(f"KERAS_BACKEND={keras_backend}: cxr runs on {' or '.join(KERAS_BACKENDS)}")
    if _ENVIRONMENT_PROBLEMS:
        raise UserError(_ENVIRONMENT_PROBLEMS[0])


# --- The dataset (docs/decisions.md, "The dataset") ----------------------------------------------------------

KAGGLE_DATASET = "paultimothymooney/chest-xray-pneumonia"
SPLITS = ("train", "val", "test")
CLASS_NAMES = ("NORMAL", "PNEUMONIA")  # label = index: PNEUMONIA = 1, the positive class for sensitivity
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")

# --- Preprocessing -----------------------------------------------------------------------------------------

# Stored once at the largest native input of the five backbones (InceptionV3, Xception: 299), so that every
# backbone reads the same pixels; 224-px backbones are resized down on read.
PROCESSED_IMAGE_SIZE = 299
# The official val split holds 16 images, so validation is carved out of train by patient (docs/decisions.md,
# "The patient split"). 10 % of the pooled train images keeps about 520 images for validation, enough for a stable
# threshold.
VAL_FRACTION = 0.1
# "patient": official test kept, train+val re-split by patient. "official": the Kaggle folders as they are.
SPLIT_MODE = "patient"
SPLIT_MODES = ("patient", "official")
# Images per TFRecord shard: about 30-60 MB at 299 px, the size tf.data reads efficiently from GCS.
SHARD_SIZE = 512
SEED = 42  # the split's and the default training seed
SEEDS = [42]  # training seeds of the pipeline: one training per backbone and seed (the demo keeps one)

# --- The model and its training (the seed: docs/decisions.md, "The seed study") -----------------------------

BACKBONES = ("MobileNet", "InceptionV3", "Xception", "ResNet50", "VGG16")  # the seed's five, in its order
# Every backbone the registry (cxr.training.backbones) can build: the seed's five, then today's usual starting
# points, EfficientNetV2 B0 and S and ConvNeXt Tiny (keras.applications 3.15), and CheXNet's DenseNet121
# (Rajpurkar et al. 2017). The CLI and the pipeline's `backbones` accept any of them; the default stays the seed's.
# Then the foundation models of keras-hub 0.32 (cxr/training/hub.py, docs/backbones.md): DINOv2 small and base
# (Oquab et al. 2023, self-supervised ViTs) and MedSigLIP's vision tower (Google 2025, SigLIP trained on medical
# images, chest X-rays among them).
ALL_BACKBONES = (*BACKBONES, "EfficientNetV2B0", "EfficientNetV2S", "ConvNeXtTiny", "DenseNet121",
                 "DINOv2Small", "DINOv2Base", "MedSigLIP")
# The keras-hub preset of each keras-hub backbone (keras_hub/src/models/*/..._presets.py): what `--weights imagenet`
# fetches from Kaggle Models through kagglehub, and the folder name under a `--weights` folder or gs:// prefix
# (`make weights` saves each one there). MedSigLIP's needs its licence accepted on Kaggle first.
HUB_PRESETS = {"DINOv2Small": "dinov2_small", "DINOv2Base": "dinov2_base", "MedSigLIP": "medsiglip_900m_448"}
# The seed. Also "none", a weights file for one backbone, or a folder or gs:// prefix holding the ImageNet files of
# every backbone under the names keras.applications downloads them as, and each keras-hub backbone's preset in a
# folder named after it (clusters without internet). "imagenet" means each backbone's published pretrained weights:
# ImageNet for keras.applications, the keras-hub preset for DINOv2 and MedSigLIP; "pretrained" is the same.
WEIGHTS = "imagenet"
PRETRAINED = ("imagenet", "pretrained")
# Where `weights=imagenet` finds the backbones' ImageNet files before Keras downloads them: a folder or a gs://
# prefix laid out as `make weights` writes it (cxr/training/weights.py). `make images WEIGHTS=DIR` bakes the files
# into the image and sets this, so that a cluster without internet starts from ImageNet; "" = download.
IMAGENET_WEIGHTS = os.environ.get("CXR_IMAGENET_WEIGHTS", "")
DENSE_UNITS = 16  # the seed: backbone - Flatten - Dense(16) - Dropout(0.5) - Dense
DROPOUT = 0.5  # the seed
LEARNING_RATE = 1e-5  # the seed: Adam(1e-5)
# The pipeline's `learning_rates`: every backbone x regime is trained at each, and the report keeps the one with the
# best validation ROC AUC (docs/results.md, "The learning rate, chosen on validation"). One rate, the seed's, so a
# default run trains what the seed trained.
LEARNING_RATES = [LEARNING_RATE]
EPOCHS = 30  # the seed: 30 epochs with early stopping
# The seed does not give its patience; InceptionV3 stopped at epoch 16 of 30 there. 5 epochs on val loss is
# the common choice and keeps a plateaued backbone from burning GPU time.
PATIENCE = 5
# Keras' default batch size, which the seed's notebook used (flow_from_directory); fits every backbone at
# 299 px in 16 GB of GPU memory with mixed precision.
BATCH_SIZE = 32
IMAGE_SIZE = 0  # 0 = each backbone's native input size (docs/decisions.md, "Training")
# Upper bounds checked before any work, so a typo cannot eat the machine's memory: 1024 px is 3.4x the largest
# native input (a 1024-px VGG16 batch of 32 already needs about 60 GB of activations), and 1024 films a batch is
# 32x Keras' default.
MAX_IMAGE_SIZE = 1024
MAX_BATCH_SIZE = 1024
# How a backbone learns. "finetune": the seed's protocol, the whole network trained end to end. "frozen": the
# backbone stays as it is, in inference mode; its features of every film are computed once and cached, and only the
# seed's head trains on them: the protocol of Kermany et al. 2018 (Cell, frozen InceptionV3 features) and of
# MedMNIST+'s linear probes (Doerrich et al. 2024), one forward pass instead of up to 30 epochs of training.
# A training or result that names no regime was fine-tuned: it was written before regimes existed.
REGIMES = ("finetune", "frozen")
DEFAULT_REGIME = "finetune"
PIPELINE_REGIMES = [DEFAULT_REGIME]  # the pipeline's `regimes`: the seed's protocol unless a run asks for more
# What learns on the backbone's output (docs/regimes.md). "seed": the seed's head (Flatten -> Dense(16) -> Dropout ->
# Dense), trained with Adam. "linear": L2-regularised logistic regression on the pooled features; "knn": cosine
# k-nearest neighbours on them: the linear probe and kNN protocols of MedMNIST+ (Doerrich et al. 2024) and of the
# DINOv2 paper's evaluation (Oquab et al. 2023). The probes are fitted by scikit-learn on the frozen regime's cached
# features; kNN has nothing to train end to end, so it is frozen only.
HEADS = ("seed", "linear", "knn")
DEFAULT_HEAD = "seed"
PIPELINE_HEADS = [DEFAULT_HEAD]  # the pipeline's `heads`: the seed's head unless a run asks for the probes
FROZEN_ONLY_HEADS = ("knn",)
# The linear probe's inverse L2 strength C (scikit-learn's LogisticRegression), chosen on validation ROC AUC: a
# decade apart from 1e-4 (weights all but zero) to 1e2 (barely regularised), on standardised features, the range
# MedMNIST+ and scikit-learn's own examples search; a tie keeps the stronger regularisation.
LINEAR_C_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
# kNN's neighbours k, chosen on validation ROC AUC: odd (no tied vote at 0.5), from 1 to 101 around the k = 20 of
# DINO's kNN evaluation (Caron et al. 2021); 101 is about 2 % of the train split. A k above the train films is
# dropped; a tie keeps the smaller k.
KNN_K_GRID = (1, 3, 5, 11, 21, 51, 101)
# The frozen regime's feature caches: a folder of this name beside the checkpoint folder (cxr train) or at the top
# of the checkpoint volume (the pipeline), so that every seed, rerun and later pipeline run finds them.
FEATURES_DIR = "features"
# Films per batch of feature extraction on a GPU: inference keeps no activations for a backward pass, so batches
# 8x training's default fit (an out-of-memory error halves them). On the CPU the training batch size is used.
FEATURE_BATCH_SIZE_GPU = 256
# BatchNormalization momentum when training from scratch (weights "none", the CPU demo and tests). Measured on
# synthetic data: MobileNet's validation accuracy stayed at the majority class for 6 epochs with Keras' 0.99,
# and reached 0.91 by epoch 5 with 0.9. ImageNet-initialised backbones keep Keras' default.
FROM_SCRATCH_BN_MOMENTUM = 0.9

DEVICE = "gpu"  # the pipeline's train tasks: a task that asked for a GPU and got none stops at once
# Keras backends training runs on (KERAS_BACKEND): TensorFlow by default; JAX compiles every step with XLA
# and, on the Keras team's benchmarks, is often the fastest for CNN training (docs/performance.md).
KERAS_BACKENDS = ("tensorflow", "jax")
# Mixed-precision policy on a GPU, per backend: float16 with TensorFlow's loss scaling (docs/decisions.md);
# bfloat16 on JAX, which needs no loss scaling and which Ampere and later GPUs (A100, H100, H200) run at the
# float16 rate.
MIXED_PRECISION_POLICY = {"tensorflow": "mixed_float16", "jax": "mixed_bfloat16"}
# GPU memory of one training, so that several trainings share one GPU (time-slicing, docs/performance.md).
# TensorFlow always grows its memory on demand here. On JAX, "" (default) allocates on demand too instead of
# JAX's up-front 75 % of the GPU; a fraction such as "0.18" caps each training at that share (five fit on one GPU)
# and keeps JAX's faster preallocating allocator.
GPU_MEMORY_FRACTION = os.environ.get("CXR_GPU_MEMORY_FRACTION", "")

# --- Evaluation --------------------------------------------------------------------------------------------

# The first operating point: P(pneumonia) >= 0.5, the threshold of Keras' BinaryAccuracy that training reports.
DEFAULT_THRESHOLD = 0.5
BOOTSTRAP_SAMPLES = 1000  # resamples for the 95 % intervals; the interval ends move < 0.5 % beyond this
CONFIDENCE = 0.95
SIGNIFICANCE = 0.05  # DeLong p-value below which a backbone's AUC is told apart from the best one's
# Equal-width probability bins of the expected calibration error and the reliability diagram: 15, as in Guo et al.
# 2017 (On Calibration of Modern Neural Networks), the usual choice for comparing networks.
CALIBRATION_BINS = 15

# --- Explanations ------------------------------------------------------------------------------------------

# Films in each Grad-CAM panel: two of each outcome (true/false positive/negative) fit one readable figure.
EXPLAIN_FILMS = 8

# --- Serving (`cxr serve`, docs/serving.md) ----------------------------------------------------------------

# The InferenceService's name in k8s/serving/, so that a request's URL is the same locally and in the cluster.
SERVE_MODEL_NAME = "cxr-pneumonia"
# Loopback unless asked: a model server reachable from the network is a decision, not a default. The image and
# the InferenceService pass --host 0.0.0.0 (KServe's own servers bind 0.0.0.0, kserve/protocol/rest/server.py).
SERVE_HOST = "127.0.0.1"
# KServe's default HTTP port (kserve.constants DEFAULT_HTTP_PORT), the port an InferenceService routes to.
SERVE_PORT = 8080
# Films in one request, predicted as one batch: Keras' default batch (BATCH_SIZE), the batch `cxr predict` runs.
SERVE_MAX_INSTANCES = BATCH_SIZE
# Request bodies above this are refused before they are read: SERVE_MAX_INSTANCES films of 1.5 MB (about 7x the
# archive's mean JPEG, 1.2 GB over 5,856 films) in base64 (4/3) is 64 MB. CXR_SERVE_MAX_BODY_BYTES overrides it.
SERVE_MAX_BODY_BYTES = int(os.environ.get("CXR_SERVE_MAX_BODY_BYTES", str(64 * 1024 * 1024)))
# Films decoded at once, over all requests: a film needs up to 5 bytes a pixel while it decodes (cxr.data.images),
# so at the 64-megapixel limit two films need at most 640 MB whatever a request holds; two keep both of the
# 2-core development machine's cores decoding. CXR_SERVE_DECODE_SLOTS overrides it (docs/serving.md, "Memory").
SERVE_DECODE_SLOTS = int(os.environ.get("CXR_SERVE_DECODE_SLOTS", "2"))
# Seconds a client may take to send the next part of a request body: a client that stalls mid-request gets a
# 408 then, instead of holding a connection (and shutdown) forever. 64 MB at 10 Mbit/s arrives in chunks far
# more often than that. CXR_SERVE_READ_TIMEOUT overrides it.
SERVE_READ_TIMEOUT = float(os.environ.get("CXR_SERVE_READ_TIMEOUT", "10"))
# Seconds SIGTERM waits for requests under way before closing their connections: Kubernetes' default
# terminationGracePeriodSeconds is 30, and the server must be gone before the kubelet's SIGKILL.
SERVE_GRACE_SECONDS = 20

# --- Containers and the pipeline ---------------------------------------------------------------------------



def _version() -> str:
    """pyproject.toml's version, the one place it is written; read from the source tree where the package is not
    installed (the GPU benchmark runs the model code from a bare checkout, docs/performance.md)."""
    try:
        return importlib.metadata.version("cxr-bench")
    except importlib.metadata.PackageNotFoundError:
        pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        if not pyproject.is_file():
            return "0+unknown"
        return tomllib.loads(pyproject.read_text())["project"]["version"]


VERSION = _version()
# The image every component runs in. `make images` tags it; `make compile IMAGE=...` overrides it.
COMPONENT_IMAGE = os.environ.get("CXR_IMAGE", f"localhost/cxr-bench:{VERSION}-gpu")
PIPELINE_NAME = "chest-xray-backbone-benchmark"
# Trains at once; five = the seed's five backbones side by side when the cluster has five GPUs.
PARALLELISM = _from_environment("CXR_PARALLELISM", "5", _whole_number_from(1), "a whole number >= 1")
# The GPU node pool the train tasks select and tolerate; the defaults match k8s/kind/cluster.yaml.tmpl.
GPU_NODE_SELECTOR = os.environ.get("CXR_GPU_NODE_SELECTOR", "nvidia.com/gpu.present=true")
GPU_TOLERATION_KEY = "nvidia.com/gpu"
# Requests for one train task: TF's input pipeline wants a few cores; 299-px caches of the whole train split
# take about 0.5 GB, the rest is TensorFlow itself.
TRAIN_CPU = "4"
TRAIN_MEMORY = "16G"
# Pod retries of a train task (`set_retry`), read against KFP 2.17.0 and its Argo 4.0.5 (docs/decisions.md,
# "Retries"): KFP's workflow defaults make the policy OnError, so a pod lost with its node (Argo: Error) is
# retried, resuming from the last epoch's checkpoint, and a failed container (Argo: Failed) is not.
TRAIN_RETRIES = 3
# set_retry's backoff_max_duration. Argo stops retrying this long after the first pod started and kills a retried
# pod when it is reached; KFP's default, 1 h, is shorter than one training (the seed's VGG16 took 1 h on one GPU).
# Two days cover 30 epochs of the slowest backbone on a GPU shared by five trainings, three times over.
TRAIN_RETRY_WINDOW = "48h"
# Starts of the training process per backbone and seed, pod retries included (counted on the checkpoint volume):
# no more than TRAIN_RETRIES, so that after every start has died with its pod there is still a pod to record the
# failure and the comparison goes on without that backbone. Read when the task runs; CXR_TRAIN_ATTEMPTS overrides
# it (the tests set 1).
TRAIN_ATTEMPTS = _from_environment("CXR_TRAIN_ATTEMPTS", "3", _whole_number_from(1), "a whole number >= 1")
# A PersistentVolumeClaim mounted on the train tasks for their checkpoints (k8s/base/checkpoints-pvc.yaml), so
# that a retry on another pod resumes; "" leaves checkpoints in the pod, lost with it.
CHECKPOINT_PVC = os.environ.get("CXR_CHECKPOINT_PVC", "cxr-checkpoints")
KAGGLE_SECRET = "kaggle-credentials"  # optional Kubernetes Secret with keys KAGGLE_USERNAME, KAGGLE_KEY
