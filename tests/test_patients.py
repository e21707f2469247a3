import pytest

from cxr.data.patients import identify


@pytest.mark.parametrize(("name", "patient", "subtype"), [
    ("IM-0115-0001.jpeg", "IM-0115", "normal"),
    ("IM-0115-0002.jpeg", "IM-0115", "normal"),
    ("NORMAL2-IM-1427-0001.jpeg", "NORMAL2-IM-1427", "normal"),
    ("person1_bacteria_1.jpeg", "person1", "bacteria"),
    ("person1_virus_6.jpeg", "person1", "virus"),
    ("person1510_bacteria_3949.jpeg", "person1510", "bacteria"),
    ("PERSON12_VIRUS_44.JPEG", "PERSON12", "virus"),
])
def test_every_kaggle_naming_scheme_yields_its_patient(name, patient, subtype):
    identity = identify(name)
    assert (identity.patient_id, identity.subtype, identity.parsed) == (patient, subtype, True)


def test_normal2_and_plain_normal_patients_stay_distinct():
    assert identify("IM-1427-0001.jpeg").patient_id != identify("NORMAL2-IM-1427-0001.jpeg").patient_id


@pytest.mark.parametrize("name", ["scan.jpeg", "person_x_1.jpeg", "IM-12.jpeg", "person3_fungal_1.jpeg"])
def test_unknown_names_become_their_own_patient(name):
    identity = identify(name)
    assert identity.parsed is False
    assert identity.patient_id == name.rsplit(".", 1)[0]
