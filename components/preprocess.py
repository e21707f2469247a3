from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from cxr import settings


@dsl.component(base_image=settings.COMPONENT_IMAGE, install_kfp_package=False)
def preprocess_dataset(raw: Input[Dataset], image_size: int, val_fraction: float, split: str, seed: int,
                       processed: Output[Dataset]):
    """Split by patient and write sharded TFRecords, manifest.csv and stats.json."""
    from cxr.data.preprocess import Settings, preprocess

    stats = preprocess(raw.path, processed.path, Settings(image_size, val_fraction, split, seed))
    processed.metadata.update({
        "images": stats["images"],
        "counts": stats["counts"],
        "skipped": len(stats["skipped"]),
        "patients_in_several_splits": len(stats["patients_in_several_splits"]),
    })
