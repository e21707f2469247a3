from kfp import dsl
from kfp.dsl import Dataset, Output

from cxr import settings


@dsl.component(base_image=settings.COMPONENT_IMAGE, install_kfp_package=False)
def ingest_dataset(source: str, cache: str, raw: Output[Dataset]):
    """Fetch the dataset (kaggle, a folder, a .zip or gs://) into {train,val,test}/{NORMAL,PNEUMONIA}/.

    Kaggle credentials arrive as environment variables from an optional Kubernetes Secret, never as parameters.
    """
    from cxr.data.ingest import ingest

    report = ingest(source, raw.path, cache=cache or None)
    raw.metadata.update({
        "images": sum(sum(c.values()) for c in report.counts.values()),
        "counts": report.counts,
        "duplicates_dropped": len(report.duplicates),
        "macos_debris_dropped": report.macos_debris,
    })
