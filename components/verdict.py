from kfp import dsl

from cxr import settings


@dsl.component(base_image=settings.COMPONENT_IMAGE, install_kfp_package=False)
def verdict(missing: str):
    """Fail the run when a training is missing from the comparison, so nobody takes it for complete; the report
    of the others is already written."""
    if missing:
        raise RuntimeError(missing)
