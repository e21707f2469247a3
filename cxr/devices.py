"""Which accelerators this process sees, and the `--device` choice of training: `auto` takes a GPU when one is
visible, `gpu` refuses to start without one (a pod that asked for a GPU and got none must not train for hours on
the CPU without a word), `cpu` hides the GPUs.

Asked through the Keras backend in use (KERAS_BACKEND: tensorflow by default, or jax), so the answer is what the
training will actually run on. Nothing here imports TensorFlow on JAX: the GPU benchmark runs this module on a
machine without it.

Also the GPU memory of one training (`limit_gpu_memory`), so that several trainings share one GPU, and the
mixed-precision policy each backend and GPU runs fastest.
"""

from __future__ import annotations

import os
import sys

from cxr import settings
from cxr.errors import UserError

DEVICES = ("auto", "gpu", "cpu")


def backend() -> str:
    import keras

    return keras.backend.backend()


def require_tensorflow(command: str, why: str) -> None:
    """Refuse in one line a command whose output is a TensorFlow graph when Keras runs on another backend: the
    model file is the same on both, so the fix is to run that command on TensorFlow."""
    if backend() != "tensorflow":
        raise UserError(f"cxr {command} runs on TensorFlow ({why}), and KERAS_BACKEND is {backend()} here: run it "
                        "with KERAS_BACKEND=tensorflow (the model trained on any backend loads there)")


def visible_gpus() -> list[str]:
    """The names of the GPUs the Keras backend can run on, e.g. ["NVIDIA H200"]; [] on a CPU-only machine."""
    if backend() == "jax":
        import jax

        return [device.device_kind for device in jax.devices() if device.platform == "gpu"]
    import tensorflow as tf

    return [tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name)
            for gpu in tf.config.list_physical_devices("GPU")]


def hide_gpus() -> None:
    """Run on the CPU even where a GPU is visible; call before the first model is built."""
    if backend() == "jax":
        import jax

        jax.config.update("jax_platforms", "cpu")
        return
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")


def select_device(device: str) -> str:
    """Apply `--device` and return what training runs on: the GPU's name, or "CPU"."""
    if device not in DEVICES:
        raise UserError(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "cpu":
        hide_gpus()
        return "CPU"
    gpus = visible_gpus()
    if gpus:
        return gpus[0]
    if device == "gpu":
        hint = os.environ.get("NVIDIA_VISIBLE_DEVICES", "unset")
        raise UserError(f"--device gpu: no GPU is visible to {backend()} (NVIDIA_VISIBLE_DEVICES={hint}); on "
                        "kind, the NVIDIA runtime must be containerd's default on the GPU node (`make cluster`), "
                        "or run with --device auto or cpu")
    return "CPU"


def limit_gpu_memory(fraction: str = settings.GPU_MEMORY_FRACTION) -> str:
    """Keep this process to its share of the GPU, so that several trainings fit on one GPU side by side; call
    before the backend first touches a GPU. Returns what was applied, for the log.

    TensorFlow: memory growth on every visible GPU (it otherwise maps nearly all of each GPU's memory at start).
    JAX: `fraction` of the GPU's memory (XLA_PYTHON_CLIENT_MEM_FRACTION), or, when empty, allocation on demand
    (XLA_PYTHON_CLIENT_PREALLOCATE=false) instead of JAX's up-front 75 %. A value already in the environment wins.
    TensorFlow, imported for tf.data under JAX, is kept off the GPUs so that it takes none of their memory.
    """
    if fraction:
        try:
            share = float(fraction)
        except ValueError:
            share = -1.0
        if not 0 < share <= 1:
            raise UserError(f"CXR_GPU_MEMORY_FRACTION must be a number in (0, 1], got {fraction!r}")
    if backend() == "jax":
        if "tensorflow" in sys.modules:
            sys.modules["tensorflow"].config.set_visible_devices([], "GPU")
        if fraction:
            os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", fraction)
            return f"JAX: {os.environ['XLA_PYTHON_CLIENT_MEM_FRACTION']} of the GPU's memory"
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        return "JAX: GPU memory allocated on demand"
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # the GPU is already initialised: its memory mode can no longer change
            return "TensorFlow: GPU already initialised, memory growth not applied"
    return "TensorFlow: GPU memory grown on demand"


def mixed_precision_policy() -> str:
    """The mixed-precision policy to train with: float16 on TensorFlow (with loss scaling); on JAX bfloat16,
    which needs no loss scaling, where the GPU computes it at full rate (compute capability 8.0 and later: A100,
    H100, H200), else float16 (T4, V100). On a CPU (forced) JAX gets bfloat16."""
    if backend() != "jax":
        return settings.MIXED_PRECISION_POLICY["tensorflow"]
    import jax

    gpus = [device for device in jax.devices() if device.platform == "gpu"]
    capability = getattr(gpus[0], "compute_capability", "8.0") if gpus else "8.0"
    if float(capability) < 8.0:
        return settings.MIXED_PRECISION_POLICY["tensorflow"]
    return settings.MIXED_PRECISION_POLICY["jax"]
