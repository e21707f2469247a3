"""Which accelerators this process sees, and the `--device` choice of training: `auto` takes a GPU when one is
visible, `gpu` refuses to start without one (a pod that asked for a GPU and got none must not train for hours on
the CPU without a word), `cpu` hides the GPUs.

Asked through the Keras backend in use (KERAS_BACKEND: tensorflow by default, or jax), so the answer is what the
training will actually run on.
"""

from __future__ import annotations

import os

from cxr.errors import UserError

DEVICES = ("auto", "gpu", "cpu")


def backend() -> str:
    import keras

    return keras.backend.backend()


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
