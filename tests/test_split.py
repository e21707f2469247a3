import pandas as pd
import pytest

from cxr.data.split import patient_split, patients_in_several_splits
from cxr.errors import UserError


def _images(normal_patients=30, pneumonia_patients=60):
    rows = []
    for p in range(normal_patients):
        rows += [{"patient_id": f"IM-{p:04d}", "class_name": "NORMAL"}] * (1 + p % 3)
    for p in range(pneumonia_patients):
        rows += [{"patient_id": f"person{p}", "class_name": "PNEUMONIA"}] * (1 + p % 4)
    return pd.DataFrame(rows)


def test_no_patient_is_on_both_sides():
    images = _images()
    images["split"] = patient_split(images, 0.2, seed=1)
    assert patients_in_several_splits(images) == []
    assert set(images["split"]) == {"train", "val"}


def test_each_class_keeps_its_share_in_validation():
    images = _images()
    images["split"] = patient_split(images, 0.2, seed=1)
    for class_name, group in images.groupby("class_name"):
        share = (group["split"] == "val").mean()
        assert 0.2 <= share < 0.2 + 4 / len(group) + 1e-9, class_name  # overshoot by at most one patient


def test_same_seed_same_split_whatever_the_row_order():
    images = _images()
    first = patient_split(images, 0.2, seed=5)
    shuffled = images.sample(frac=1, random_state=0)
    second = patient_split(shuffled, 0.2, seed=5)
    assert first.equals(second.sort_index())
    assert not first.equals(patient_split(images, 0.2, seed=6))


def test_leak_detector_finds_a_shared_patient():
    images = pd.DataFrame({"patient_id": ["a", "a", "b"], "split": ["train", "test", "test"]})
    assert patients_in_several_splits(images) == ["a"]


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5])
def test_fraction_out_of_range_is_refused(fraction):
    with pytest.raises(UserError, match="--val-fraction"):
        patient_split(_images(), fraction, seed=1)


def test_a_class_with_one_patient_cannot_be_split():
    images = pd.DataFrame({"patient_id": ["a", "a", "b", "c"], "class_name": ["NORMAL", "NORMAL", "PNEUMONIA",
                                                                            "PNEUMONIA"]})
    with pytest.raises(UserError, match="class NORMAL has 1 patient"):
        patient_split(images, 0.5, seed=1)
