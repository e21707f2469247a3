"""A synthetic stand-in for the Kaggle archive: same layout, same file-name schemes, a learnable signal.

Used by the demo and the tests (the real archive needs Kaggle credentials and 2.3 GB). Pneumonia films carry
patchy opacities in the lung fields (one dense lobar patch for bacterial, many small ones for viral), which a
small CNN learns in a few epochs. Same seed, same bytes. chest_xray/lesions.csv gives the box of every patch, so
that explanations can be checked against where the signal really is (`cxr explain --lesions`).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from cxr import files
from cxr.errors import UserError
from cxr.outputs import make_folder

# Proportions of the real archive (docs/decisions.md, "The dataset"): train 1,341 / 3,875, test 234 / 390, 61 % of
# patients with several images, 242 of 390 test pneumonia bacterial.
PNEUMONIA_PER_NORMAL_TRAIN = 3
TEST_NORMAL_PER_TRAIN_NORMAL = 234 / 1341
TEST_PNEUMONIA_PER_NORMAL = 390 / 234
BACTERIAL_SHARE = 242 / 390
MAX_IMAGES_PER_PATIENT = 4
RGB_SHARE = 0.05  # "a few hundred are RGB" of 5,856
BASE_RESOLUTION = 128  # drawn at this size, then scaled: cheap at any output size
MIN_OUTPUT_SIZE = 32
MAX_OUTPUT_SIZE = 4096  # above the real films' 2,500 px; larger would only fill the disk
MAX_PER_CLASS = 20_000  # 15x the real archive's 1,341 NORMAL training films
# A patch's box reaches one radius from its centre on each axis: the contour where it adds 1/e (37 %) of its
# peak, 22-33 grey levels, several times the film noise (6); beyond two radii it adds less than the noise.
LESION_BOX_RADII = 1.0
LESION_COLUMNS = ["file", "width", "height", "x_min", "y_min", "x_max", "y_max"]


@dataclass(frozen=True)
class SplitPlan:
    split: str
    normal: int
    pneumonia: int


def plan_splits(per_class: int) -> list[SplitPlan]:
    """How many images of each class each split gets, for `per_class` NORMAL training images."""
    if not 4 <= per_class <= MAX_PER_CLASS:
        raise UserError(f"--per-class must be between 4 and {MAX_PER_CLASS}, got {per_class}")
    test_normal = max(2, round(per_class * TEST_NORMAL_PER_TRAIN_NORMAL))
    val_each = max(2, per_class // 20)
    return [
        SplitPlan("train", per_class, per_class * PNEUMONIA_PER_NORMAL_TRAIN),
        SplitPlan("val", val_each, val_each),
        SplitPlan("test", test_normal, round(test_normal * TEST_PNEUMONIA_PER_NORMAL)),
    ]


def _blob(height: int, width: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    return np.exp(-(((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2))


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in pixels, x to the right, y down; edges as continuous coordinates."""

    x_min: float
    y_min: float
    x_max: float
    y_max: float

    def scaled(self, x_scale: float, y_scale: float) -> Box:
        return Box(self.x_min * x_scale, self.y_min * y_scale, self.x_max * x_scale, self.y_max * y_scale)


def draw_film(rng: np.random.Generator, subtype: str) -> np.ndarray:
    """One frontal chest film at BASE_RESOLUTION height, as float pixels 0-255."""
    return draw_film_and_lesions(rng, subtype)[0]


def draw_film_and_lesions(rng: np.random.Generator, subtype: str) -> tuple[np.ndarray, list[Box]]:
    """One frontal chest film at BASE_RESOLUTION height, as float pixels 0-255, and the box of every opacity
    patch drawn on it (none on a normal film), in the same pixels."""
    height = BASE_RESOLUTION
    width = int(height * rng.uniform(0.95, 1.35))  # real films are mostly landscape-ish or square
    film = np.full((height, width), rng.uniform(10, 35), np.float32)
    torso = _blob(height, width, height * 0.6, width / 2, height * 0.65, width * 0.42)
    film += 150 * np.clip(torso * 1.6, 0, 1)
    lungs = []
    boxes: list[Box] = []
    for side in (-1, 1):
        cy, cx = height * rng.uniform(0.45, 0.52), width / 2 + side * width * rng.uniform(0.17, 0.21)
        ry, rx = height * rng.uniform(0.26, 0.31), width * rng.uniform(0.11, 0.14)
        lungs.append((cy, cx, ry, rx))
        film -= 95 * np.clip(_blob(height, width, cy, cx, ry, rx) * 1.8, 0, 1)
    film += 55 * _blob(height, width, height * 0.55, width / 2, height * 0.6, width * 0.035)  # spine
    ribs = np.sin(np.linspace(0, rng.uniform(20, 26), height))[:, None] * 6
    film += ribs * torso
    if subtype in ("bacteria", "virus"):
        cy, cx, ry, rx = lungs[rng.integers(2)]
        film += rng.uniform(30, 45) * _blob(height, width, cy, cx, ry, rx)  # the lung field loses its darkness
        patches = rng.integers(1, 3) if subtype == "bacteria" else rng.integers(5, 10)
        scale = 0.55 if subtype == "bacteria" else 0.22
        for _ in range(patches):
            py, px = cy + rng.uniform(-0.6, 0.6) * ry, cx + rng.uniform(-0.6, 0.6) * rx
            patch_ry, patch_rx = ry * scale, rx * scale * 1.3
            film += rng.uniform(60, 90) * _blob(height, width, py, px, patch_ry, patch_rx)
            reach_y, reach_x = LESION_BOX_RADII * patch_ry, LESION_BOX_RADII * patch_rx
            # +0.5: blob centres are pixel indices, box edges continuous coordinates (pixel i spans [i, i + 1]).
            boxes.append(Box(max(0.0, px + 0.5 - reach_x), max(0.0, py + 0.5 - reach_y),
                             min(float(width), px + 0.5 + reach_x), min(float(height), py + 0.5 + reach_y)))
    film *= rng.uniform(0.85, 1.15)  # exposure
    film += rng.normal(0, 6, film.shape)
    return np.clip(film, 0, 255), boxes


def scaled_width(film: np.ndarray, size: int) -> int:
    """The width of `film` scaled to height `size`, as encode_film writes it."""
    return round(size * film.shape[1] / film.shape[0])


def encode_film(film: np.ndarray, size: int, rgb: bool) -> bytes:
    """Scale a drawn film so its height is `size` and encode it as JPEG, RGB with a faint tint if asked."""
    gray = Image.fromarray(film.astype(np.uint8), mode="L")
    scaled = gray.resize((scaled_width(film, size), size), Image.Resampling.BILINEAR)
    image = Image.merge("RGB", (scaled, scaled, scaled.point(lambda v: int(v * 0.96)))) if rgb else scaled
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _patient_groups(rng: np.random.Generator, images: int) -> list[int]:
    """Images per patient summing to `images`, about 61 % of patients with several (docs/decisions.md)."""
    groups: list[int] = []
    while sum(groups) < images:
        several = rng.random() < 0.61
        groups.append(int(rng.integers(2, MAX_IMAGES_PER_PATIENT + 1)) if several else 1)
    groups[-1] -= sum(groups) - images
    return [g for g in groups if g > 0]


def synthesize(out: Path, per_class: int = 100, seed: int = 42, min_size: int = 1000,
               max_size: int = 2500) -> dict[str, dict[str, int]]:
    """Write OUT/chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/, OUT/chest_xray/lesions.csv (one row per
    opacity: the film's path relative to chest_xray/, its width and height, the box in its pixels) and
    OUT/chest_xray/cxr-synthetic.json (the marker that says these films are drawn), and return the counts
    written.

    Image heights are drawn uniformly from [min_size, max_size] (the real films are about 1000-2500 px).
    Refuses to write into an existing chest_xray folder: nothing a user owns is overwritten.
    """
    if not MIN_OUTPUT_SIZE <= min_size <= max_size <= MAX_OUTPUT_SIZE:
        raise UserError(f"--min-size/--max-size must satisfy {MIN_OUTPUT_SIZE} <= min <= max <= {MAX_OUTPUT_SIZE}, "
                        f"got {min_size} and {max_size}")
    root = Path(out) / "chest_xray"
    make_folder(Path(out), "OUT")
    if root.exists():
        raise UserError(f"{root} already exists; choose another OUT")
    rng = np.random.default_rng(seed)
    counts: dict[str, dict[str, int]] = {}
    next_patient = {"NORMAL": 1, "PNEUMONIA": 1}
    next_image = 1  # the Kaggle pneumonia names count images globally: person1_bacteria_1, person1_virus_6
    lesions: list[list] = []
    for plan in plan_splits(per_class):
        counts[plan.split] = {}
        for class_name, total in (("NORMAL", plan.normal), ("PNEUMONIA", plan.pneumonia)):
            folder = root / plan.split / class_name
            folder.mkdir(parents=True)
            for group in _patient_groups(rng, total):
                patient = next_patient[class_name]
                next_patient[class_name] += 1
                if class_name == "NORMAL":
                    prefix = "NORMAL2-IM" if rng.random() < 0.5 else "IM"
                    names = [f"{prefix}-{patient:04d}-{k + 1:04d}.jpeg" for k in range(group)]
                    subtype = "normal"
                else:
                    subtype = "bacteria" if rng.random() < BACTERIAL_SHARE else "virus"
                    names = [f"person{patient}_{subtype}_{next_image + k}.jpeg" for k in range(group)]
                    next_image += group
                for name in names:
                    size = int(rng.integers(min_size, max_size + 1))
                    film, boxes = draw_film_and_lesions(rng, subtype)
                    data = encode_film(film, size, rgb=rng.random() < RGB_SHARE)
                    (folder / name).write_bytes(data)
                    width = scaled_width(film, size)
                    for box in boxes:
                        box = box.scaled(width / film.shape[1], size / film.shape[0])
                        lesions.append([f"{plan.split}/{class_name}/{name}", width, size,
                                        *(round(edge, 2) for edge in (box.x_min, box.y_min, box.x_max, box.y_max))])
            counts[plan.split][class_name] = total
    with (root / files.LESIONS).open("w", newline="") as handle:
        csv.writer(handle).writerows([LESION_COLUMNS, *lesions])
    (root / files.SYNTHETIC_MARKER).write_text(json.dumps({
        "made_by": "cxr synth", "seed": seed, "per_class": per_class, "min_size": min_size, "max_size": max_size,
        "counts": counts}, indent=2))
    return counts
