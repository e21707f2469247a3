"""Every default of the project, in one place, each with where it comes from.

The CLI, the KFP components and the pipeline read their defaults from here; nothing else hard-codes them.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
from pathlib import Path

# --- The dataset (GUIDE section 2) -------------------------------------------------------------------------

KAGGLE_DATASET = "paultimothymooney/chest-xray-pneumonia"
SPLITS = ("train", "val", "test")
CLASS_NAMES = ("NORMAL", "PNEUMONIA")  # label = index: PNEUMONIA = 1, the positive class for sensitivity
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")

# --- Preprocessing -----------------------------------------------------------------------------------------

# Stored once at the largest native input of the five backbones (InceptionV3, Xception: 299), so that every
# backbone reads the same pixels; 224-px backbones are resized down on read.
PROCESSED_IMAGE_SIZE = 299
# The official val split holds 16 images (GUIDE section 2), so validation is carved out of train by patient.
# 10 % of the pooled train images keeps about 520 images for validation, enough for a stable threshold.
VAL_FRACTION = 0.1
# "patient": official test kept, train+val re-split by patient. "official": the Kaggle folders as they are.
SPLIT_MODE = "patient"
SPLIT_MODES = ("patient", "official")
# Images per TFRecord shard: about 30-60 MB at 299 px, the size tf.data reads efficiently from GCS.
SHARD_SIZE = 512
SEED = 42  # the split's and the default training seed
SEEDS = [42]  # training seeds of the pipeline: one training per backbone and seed (the demo keeps one)

# --- The model and its training (the seed, ../shared/seed/README.md section 4) --------------------------

BACKBONES = ("MobileNet", "InceptionV3", "Xception", "ResNet50", "VGG16")  # the seed's five, in its order
# Every backbone the registry (cxr.training.backbones) can build: the seed's five, then today's usual starting
# points, EfficientNetV2 B0 and S and ConvNeXt Tiny (keras.applications 3.15), and CheXNet's DenseNet121
# (Rajpurkar et al. 2017). The CLI and the pipeline's `backbones` accept any of them; the default stays the seed's.
ALL_BACKBONES = (*BACKBONES, "EfficientNetV2B0", "EfficientNetV2S", "ConvNeXtTiny", "DenseNet121")
WEIGHTS = "imagenet"  # the seed; "none" or a path to a .weights.h5 file for clusters without internet
DENSE_UNITS = 16  # the seed: backbone - Flatten - Dense(16) - Dropout(0.5) - Dense
DROPOUT = 0.5  # the seed
LEARNING_RATE = 1e-5  # the seed: Adam(1e-5)
EPOCHS = 30  # the seed: 30 epochs with early stopping
# The seed does not give its patience; InceptionV3 stopped at epoch 16 of 30 there. 5 epochs on val loss is
# the common choice and keeps a plateaued backbone from burning GPU time.
PATIENCE = 5
# Keras' default batch size, which the seed's notebook used (flow_from_directory); fits every backbone at
# 299 px in 16 GB of GPU memory with mixed precision.
BATCH_SIZE = 32
IMAGE_SIZE = 0  # 0 = each backbone's native input size (224 or 299, GUIDE section 5)
# Upper bounds checked before any work, so a typo cannot eat the machine's memory: 1024 px is 3.4x the largest
# native input (a 1024-px VGG16 batch of 32 already needs about 60 GB of activations), and 1024 films a batch is
# 32x Keras' default.
MAX_IMAGE_SIZE = 1024
MAX_BATCH_SIZE = 1024
# How a backbone learns. "finetune": the seed's protocol, the whole network trained end to end. "frozen": the
# backbone (ImageNet weights) stays as it is, in inference mode; its features of every film are computed once and
# cached, and only the seed's head trains on them: the protocol of Kermany et al. 2018 (Cell, frozen InceptionV3)
# and of MedMNIST+'s linear probes (Doerrich et al. 2024), about 90x less compute than 30 fine-tuning epochs.
REGIMES = ("finetune", "frozen")
REGIME = "finetune"  # the seed's
REGIME_LIST = ["finetune"]  # the pipeline's `regimes`: the seed's protocol unless asked
# The frozen regime's feature cache, under the checkpoint folder's parent (cxr train) or the checkpoint volume
# (the pipeline), so that every seed and rerun finds it.
FEATURES_DIR = "features"
# Films per batch of feature extraction on a GPU: inference keeps no activations for a backward pass, so batches
# 8x training's fit (an out-of-memory error halves them). On the CPU, larger batches than training's are not faster.
FEATURE_BATCH_SIZE_GPU = 256
# BatchNormalization momentum when training from scratch (weights "none", the CPU demo and tests). Measured on
# synthetic data: MobileNet's validation accuracy stayed at the majority class for 6 epochs with Keras' 0.99,
# and reached 0.91 by epoch 5 with 0.9. ImageNet-initialised backbones keep Keras' default.
FROM_SCRATCH_BN_MOMENTUM = 0.9

DEVICE = "gpu"  # the pipeline's train tasks: a task that asked for a GPU and got none stops at once
# Keras backends training runs on (KERAS_BACKEND): TensorFlow by default; JAX compiles every step with XLA
# and, on the Keras team's benchmarks, is often the fastest for CNN training (docs/performance.md).
KERAS_BACKENDS = ("tensorflow", "jax")
# Mixed-precision policy on a GPU, per backend: float16 with TensorFlow's loss scaling (GUIDE section 5);
# bfloat16 on JAX, which needs no loss scaling and which Ampere and later GPUs (A100, H100, H200) run at the
# float16 rate.
MIXED_PRECISION_POLICY = {"tensorflow": "mixed_float16", "jax": "mixed_bfloat16"}
# GPU memory of one training, so that several trainings share one GPU (time-slicing, docs/performance.md).
# TensorFlow always grows its memory on demand here. On JAX, "" (default) allocates on demand too instead of
# JAX's up-front 75 % of the GPU; a fraction such as "0.18" caps each training at that share (five fit on one GPU)
# and keeps JAX's faster preallocating allocator.
GPU_MEMORY_FRACTION = os.environ.get("CXR_GPU_MEMORY_FRACTION", "")

# --- Evaluation --------------------------------------------------------------------------------------------

BOOTSTRAP_SAMPLES = 1000  # resamples for the 95 % intervals; the interval ends move < 0.5 % beyond this
CONFIDENCE = 0.95
SIGNIFICANCE = 0.05  # DeLong p-value below which a backbone's AUC is told apart from the best one's
# Equal-width probability bins of the expected calibration error and the reliability diagram: 15, as in Guo et al.
# 2017 (On Calibration of Modern Neural Networks), the usual choice for comparing networks.
CALIBRATION_BINS = 15

# --- Explanations ------------------------------------------------------------------------------------------

# Films in each Grad-CAM panel: two of each outcome (true/false positive/negative) fit one readable figure.
EXPLAIN_FILMS = 8

# --- Containers and the pipeline ---------------------------------------------------------------------------



def _version() -> str:
    """pyproject.toml's version, the one place it is written; read from the source tree where the package is not
    installed (the GPU benchmark runs the model code from a bare checkout, docs/performance.md)."""
    try:
        return importlib.metadata.version("cxr-bench")
    except importlib.metadata.PackageNotFoundError:
        pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        found = re.search(r'^version = "(.+)"$', pyproject.read_text(), re.MULTILINE) if pyproject.is_file() else None
        return found.group(1) if found else "0+unknown"


VERSION = _version()
# The image every component runs in. `make images` tags it; `make compile IMAGE=...` overrides it.
COMPONENT_IMAGE = os.environ.get("CXR_IMAGE", f"localhost/cxr-bench:{VERSION}-gpu")
PIPELINE_NAME = "chest-xray-backbone-benchmark"
# Trains at once; five = the seed's five backbones side by side when the cluster has five GPUs.
PARALLELISM = int(os.environ.get("CXR_PARALLELISM", "5"))
# The GPU node pool the train tasks select and tolerate; the defaults match k8s/kind/cluster.yaml.tmpl.
GPU_NODE_SELECTOR = os.environ.get("CXR_GPU_NODE_SELECTOR", "nvidia.com/gpu.present=true")
GPU_TOLERATION_KEY = "nvidia.com/gpu"
# Requests for one train task: TF's input pipeline wants a few cores; 299-px caches of the whole train split
# take about 0.5 GB, the rest is TensorFlow itself.
TRAIN_CPU = "4"
TRAIN_MEMORY = "16G"
TRAIN_RETRIES = 3  # pod retries: a preempted GPU node resumes from the last epoch's checkpoint
# Starts of the training process per backbone and seed, pod retries included (counted on the checkpoint volume):
# fewer than the TRAIN_RETRIES + 1 pods, so the last pod records the failure and the comparison goes on without
# that backbone. Read when the task runs; CXR_TRAIN_ATTEMPTS overrides it (the tests set 1).
TRAIN_ATTEMPTS = int(os.environ.get("CXR_TRAIN_ATTEMPTS", "3"))
# A PersistentVolumeClaim mounted on the train tasks for their checkpoints (k8s/base/checkpoints-pvc.yaml), so
# that a retry on another pod resumes; "" leaves checkpoints in the pod, lost with it.
CHECKPOINT_PVC = os.environ.get("CXR_CHECKPOINT_PVC", "cxr-checkpoints")
KAGGLE_SECRET = "kaggle-credentials"  # optional Kubernetes Secret with keys KAGGLE_USERNAME, KAGGLE_KEY
