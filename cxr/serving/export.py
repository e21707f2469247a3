"""`cxr export`: a TensorFlow SavedModel that serves encoded films, for TF Serving and KServe.

The signature `serving_default` takes `image_bytes`, a batch of JPEG or PNG files as strings (in TF
Serving's REST API: `{"instances": [{"b64": "..."}]}`), and returns, per film, `probability` (P(pneumonia),
float32), `decision` (NORMAL or PNEUMONIA at the validation threshold, baked in) and `error` (empty, or why the
film was not read; its probability is then NaN and its decision empty). One bad film never fails the others, and
an empty batch gets empty outputs. Decoding, grayscale and both resizes run inside the graph: JPEGs (CMYK ones
too) decode to PIL's pixels (same DCT scale, same IDCT), PIL's resize is repeated to within a grey level on a few
pixels, then comes the reader's own resize (cxr.data.reader.resize_film). Probabilities agree with `cxr predict`
closely, not exactly. A film larger than `cxr predict` decodes (cxr.data.images.MAX_PIXELS) is refused from its
header, before any pixel is decoded.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from cxr import artifacts, files, provenance, settings
from cxr.data.images import MAX_PIXELS, NOT_JPEG_OR_PNG
from cxr.devices import require_tensorflow
from cxr.errors import UserError
from cxr.outputs import claim
from cxr.serving.trained import Preprocessing, find_threshold, load_model, read_preprocessing

# TF Serving (also KServe's tensorflow predictor) decodes {"b64": ...} for any string input; Vertex AI only for
# inputs whose name ends in `_bytes`: this name works with all three.
INPUT_NAME = "image_bytes"
VERSION = "1"  # TF Serving loads numbered versions under the model's base path


# The first bytes of the two formats every way into a model reads (cxr.data.images.FORMATS).
JPEG_MAGIC, PNG_MAGIC = b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"


def _starts_with(data, magic: bytes):
    import tensorflow as tf

    return tf.equal(tf.strings.substr(data, 0, len(magic)), magic)


def _grayscale_uint8(data, size: int):
    """Encoded bytes -> uint8 [h, w, 1] as cxr.data.images.decode_resized decodes them before its resize: a JPEG
    at the DCT scale PIL's draft picks for `size` with libjpeg's accurate IDCT (PIL's; TensorFlow's default is
    the fast one, a grey level off), a 16-bit PNG's used range stretched to 0-255 (TensorFlow's own conversion
    would keep it nearly black)."""
    import tensorflow as tf

    def jpeg():
        shape = tf.io.extract_jpeg_shape(data)
        scale = tf.reduce_min(shape[:2] // size)  # PIL: the largest of 8, 4, 2, 1 that keeps >= size
        index = tf.add_n([tf.cast(scale >= ratio, tf.int32) for ratio in (2, 4, 8)])

        def decode(ratio: int, channels: int):
            return tf.io.decode_jpeg(data, channels=channels, ratio=ratio, dct_method="INTEGER_ACCURATE")

        def gray(ratio: int):
            # libjpeg converts CMYK to RGB but not to grayscale: via RGB, with PIL's luminance weights.
            return tf.cond(tf.equal(shape[2], 4), lambda: _luminance(decode(ratio, 3)), lambda: decode(ratio, 1))

        return tf.switch_case(index, [lambda ratio=ratio: gray(ratio) for ratio in (1, 2, 4, 8)])

    def png16():
        # Every 16-bit value's 8-bit result (a 64 KB table), then one lookup per pixel: 7 bytes a pixel at most
        # (the decoded 2, the int32 indices 4, the result 1) where float32 arithmetic on the film took 11.
        pixels = tf.io.decode_png(data, channels=1, dtype=tf.uint16)
        low = tf.cast(tf.reduce_min(pixels), tf.float32)
        high = tf.cast(tf.reduce_max(pixels), tf.float32)
        values = tf.range(65536, dtype=tf.float32)
        table = tf.cast(tf.clip_by_value(tf.round(tf.math.divide_no_nan((values - low) * 255.0, high - low)), 0, 255),
                        tf.uint8)
        return tf.gather(table, tf.cast(pixels, tf.int32))

    def png8():
        return tf.io.decode_png(data, channels=1, dtype=tf.uint8)

    is_png16 = tf.logical_and(_starts_with(data, PNG_MAGIC), tf.equal(tf.strings.substr(data, 24, 1), b"\x10"))
    image = tf.case([(_starts_with(data, JPEG_MAGIC), jpeg), (is_png16, png16)], default=png8, exclusive=True)
    image.set_shape([None, None, 1])
    return image


def _luminance(rgb):
    """uint8 RGB -> uint8 grayscale with PIL's ITU-R 601-2 weights (its convert("L"), to within a grey level)."""
    import tensorflow as tf

    weights = tf.constant([299 / 1000, 587 / 1000, 114 / 1000])
    gray = tf.tensordot(tf.cast(rgb, tf.float32), weights, axes=[[2], [0]])[..., None]
    return tf.cast(tf.round(tf.clip_by_value(gray, 0, 255)), tf.uint8)


def _header_pixels(data):
    """width x height of an encoded film, from its header alone (int64; -1 for a format other than JPEG and
    PNG). Raises on a header too short or damaged to read: the caller drops such films."""
    import tensorflow as tf

    def number(position: int, length: int, big_endian: bool):
        digits = tf.cast(tf.io.decode_raw(tf.strings.substr(data, position, length), tf.uint8), tf.int64)
        digits = digits if big_endian else tf.reverse(digits, [0])
        tf.debugging.assert_equal(tf.size(digits), length, message="header too short")
        return tf.reduce_sum(digits * (256 ** tf.range(length - 1, -1, -1, dtype=tf.int64)))

    def jpeg():
        return tf.reduce_prod(tf.cast(tf.io.extract_jpeg_shape(data)[:2], tf.int64))

    def png():  # IHDR: width, height as 4-byte big-endian numbers from byte 16
        return number(16, 4, True) * number(20, 4, True)

    return tf.case([(_starts_with(data, JPEG_MAGIC), jpeg), (_starts_with(data, PNG_MAGIC), png)],
                   default=lambda: tf.constant(-1, tf.int64), exclusive=True)


def _pil_bilinear(image, size: int):
    """PIL's BILINEAR resize (cxr.data.images.decode_resized) in TensorFlow ops: PIL filters rows, rounds to
    8 bits, then filters columns; both use the antialiasing triangle filter. Measured: the same pixels but for
    0.1-1 % of them, one grey level off (PIL's fixed-point weights). PIL's box `reducing_gap` pre-shrink, which
    only a film still 4x the size after the JPEG DCT scale would take, is not repeated."""
    import tensorflow as tf

    rows = tf.image.resize(image, (tf.shape(image)[0], size), method="bilinear", antialias=True)
    rows = tf.cast(tf.round(tf.clip_by_value(rows, 0, 255)), tf.uint8)
    both = tf.image.resize(rows, (size, size), method="bilinear", antialias=True)
    return tf.cast(tf.round(tf.clip_by_value(both, 0, 255)), tf.uint8)


def film_in_graph(data, prep: Preprocessing):
    """One encoded film as the model's input, uint8 [size, size, 1], in TensorFlow ops only."""
    from cxr.data.reader import resize_film

    # Two resizes, as training saw them: to the stored size (`cxr preprocess`, PIL), then the reader's.
    stored = _pil_bilinear(_grayscale_uint8(data, prep.processed_size), prep.processed_size)
    return resize_film(stored, prep.image_size)


def _gather(dataset, element_shape: list[int], dtype):
    """A tf.data dataset of (index, value) -> (indices [k], values [k, *element_shape]); k may be 0."""
    import tensorflow as tf

    empty = (tf.zeros([0], tf.int32), tf.zeros([0, *element_shape], dtype))
    return dataset.reduce(empty, lambda kept, item: (tf.concat([kept[0], [item[0]]], 0),
                                                      tf.concat([kept[1], [item[1]]], 0)))


def serving_function(model, prep: Preprocessing, threshold: float):
    """encoded films [n] -> {"probability": [n], "decision": [n], "error": [n]}, the whole preprocessing in the
    graph. A film that cannot be read gets its reason in `error`, NaN and an empty decision, and the others are
    answered: each film is read in a tf.data pipeline that drops the ones whose decoding fails (ignore_errors),
    and the indices of the films kept say which were answered."""
    import tensorflow as tf

    size = prep.image_size

    def serve(image_bytes):
        count = tf.size(image_bytes)
        films = tf.data.Dataset.from_tensor_slices((tf.range(count), image_bytes))
        # The header first: a film too large to decode safely is never decoded.
        sized, pixels = _gather(films.map(lambda i, data: (i, _header_pixels(data))).ignore_errors(), [], tf.int64)
        header = tf.tensor_scatter_nd_update(tf.fill([count], tf.constant(-2, tf.int64)), sized[:, None], pixels)
        readable = tf.logical_and(header >= 0, header <= MAX_PIXELS)
        decoded, inputs = _gather(
            films.filter(lambda i, data: readable[i]).map(lambda i, data: (i, film_in_graph(data, prep)))
            .ignore_errors(), [size, size, 1], tf.uint8)
        # No film to answer (an empty batch, or only bad films): the model is not called, its layers refuse a
        # batch of zero.
        answered = tf.cond(tf.size(decoded) > 0, lambda: tf.reshape(model(inputs, training=False), [-1]),
                           lambda: tf.zeros([0], tf.float32))
        probability = tf.tensor_scatter_nd_update(tf.fill([count], float("nan")), decoded[:, None], answered)
        ok = tf.tensor_scatter_nd_update(tf.zeros([count], tf.bool), decoded[:, None], tf.ones_like(decoded, tf.bool))
        # float64, as cxr.serving.trained.decide: a float32 comparison rounds a threshold one float64 step above
        # a probability down onto it.
        positive = tf.cast(probability, tf.float64) >= tf.constant(threshold, tf.float64)
        decision = tf.where(ok, tf.where(positive, settings.CLASS_NAMES[1], settings.CLASS_NAMES[0]), "")
        too_large = f"too large to decode safely (more than {MAX_PIXELS:,} pixels)"
        reason = tf.where(tf.equal(tf.strings.length(image_bytes), 0), "empty file",
                          tf.where(header == -2, "corrupt image: its header cannot be read",
                          tf.where(header == -1, NOT_JPEG_OR_PNG,
                                   tf.where(header > MAX_PIXELS, too_large,
                                            "corrupt image: it cannot be decoded"))))
        return {"probability": probability, "decision": decision, "error": tf.where(ok, "", reason)}

    return serve


def export(model_dir: Path, out: Path, result_dir: Path | None = None, threshold: float | None = None) -> Path:
    """Write model_dir's model as a SavedModel to out/1/ (TF Serving's layout: point its model base path, or a
    KServe storageUri, at `out`) and return out/1. `out` is an owned output folder (cxr.outputs): a rerun of the
    same export on a finished `out` reuses it, anything else in it is refused."""
    out, model_dir = Path(out), Path(model_dir)
    _refuse_inside(out, model_dir, "--model")
    if result_dir is not None:
        _refuse_inside(out, Path(result_dir), "--result")
    # The settings first: a wrong --threshold or --model is one line before TensorFlow loads, and leaves --out
    # free for the right one.
    threshold = find_threshold(model_dir, result_dir, threshold)
    read_preprocessing(model_dir)
    require_tensorflow("export", "a SavedModel is a TensorFlow graph")
    with claim(out, "export", {"model": str(model_dir.resolve()), "threshold": threshold}) as output:
        if output.finished and (out / VERSION / "saved_model.pb").is_file():
            print(f"export: {out} already holds this export; reusing it", file=sys.stderr)
            return out / VERSION
        target = _export(model_dir, out, threshold, provenance.export_record(model_dir, result_dir))
        output.finish()
    return target


def _refuse_inside(out: Path, owned: Path, option: str) -> None:
    """`out` may not be `owned` or a folder inside it: `cxr train` and `cxr evaluate` own their folders, and
    a SavedModel written among their files would be taken for part of them (and copied with them)."""
    out_path, owned_path = out.resolve(), owned.resolve()
    if out_path == owned_path or owned_path in out_path.parents:
        raise UserError(f"--out {out} is inside {option} {owned}, a folder another cxr command owns; export to a "
                        "folder of its own")


def _export(model_dir: Path, out: Path, threshold: float, record: dict) -> Path:
    prep = read_preprocessing(model_dir)
    target = out / VERSION
    write_saved_model(load_model(model_dir), prep, threshold, target)
    (out / "cxr_export.json").write_text(json.dumps({
        "model_dir": str(model_dir), "threshold": threshold, **prep.__dict__, "provenance": record,
        "signature": {"inputs": {INPUT_NAME: "string [batch]: JPEG or PNG bytes"},
                      "outputs": {"probability": "float32 [batch]: NaN where error is set",
                                  "decision": "string [batch]: NORMAL or PNEUMONIA, empty where error is set",
                                  "error": "string [batch]: empty, or why the film was not read"}}}, indent=2))
    return target


def write_saved_model(model, prep: Preprocessing, threshold: float, target: Path) -> None:
    """`model` as a SavedModel in `target` whose `serving_default` is serving_function.

    A tf.Module that holds the model's variables and the one function, rather than keras.export.ExportArchive:
    the archive walks the whole Keras model and traces it again for resources it might hold, and keeps a copy of
    every variable (InceptionV3 at 75 px: 1.6x the time and twice the size, benchmarks/model_io.py)."""
    import tensorflow as tf

    servable = tf.Module()
    servable.model_variables = [variable.value for variable in model.variables]  # what the function reads
    servable.serve = tf.function(serving_function(model, prep, threshold),
                                 input_signature=[tf.TensorSpec([None], tf.string, name=INPUT_NAME)])
    tf.saved_model.save(servable, str(target),
                        signatures={"serving_default": servable.serve.get_concrete_function()})


def best_candidate(candidates: Sequence[tuple[Path, Path]]) -> tuple[Path, Path]:
    """The (model_dir, result_dir) with the highest validation ROC AUC, ties to the lower validation loss:
    the model to serve is chosen on validation data, never on the test split whose numbers the report gives."""
    if not candidates:
        raise UserError("no evaluated model to export")

    def validation(candidate: tuple[Path, Path]) -> tuple[float, float]:
        metrics = artifacts.read_metrics(Path(candidate[1]) / files.METRICS)["validation"]
        auc = metrics["roc_auc"] if metrics["roc_auc"] is not None else float("-inf")
        return -auc, metrics["loss"]

    return min(candidates, key=validation)


def export_best(candidates: Sequence[tuple[Path, Path]], out: Path) -> tuple[str, Path]:
    """Export the best of (model_dir, result_dir) pairs (best_candidate) to `out`; return its backbone and the
    SavedModel's path. For the pipeline's aggregate step."""
    from cxr.serving.trained import backbone_name

    model_dir, result_dir = best_candidate(candidates)
    return backbone_name(model_dir), export(model_dir, out, result_dir=result_dir)


def export_best_of(model_dirs: Sequence[Path], result_dirs: Sequence[Path], out: Path) -> str | None:
    """The pipeline's export: pair each finished result with its model by training (one backbone may be trained in
    both regimes, with several heads and at several learning rates), export the best (on validation) to `out` and
    return its backbone; None when no training finished."""
    def key(folder: Path) -> str | None:
        if artifacts.read_failure(folder) is not None or not (Path(folder) / files.TRAIN_METRICS).is_file():
            return None
        return provenance.training_id(folder)

    models = {key(d): Path(d) for d in model_dirs if key(d) is not None}
    pairs = [(models[key(r)], Path(r)) for r in result_dirs if key(r) is not None and key(r) in models]
    if not pairs:
        Path(out).mkdir(parents=True, exist_ok=True)  # an output artifact KFP uploads even when empty
        return None
    backbone, _ = export_best(pairs, out)
    return backbone
