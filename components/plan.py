from typing import List

from kfp import dsl

from cxr import settings


@dsl.component(base_image=settings.COMPONENT_IMAGE, install_kfp_package=False)
def plan_trainings(backbones: List[str], regimes: List[str], heads: List[str], seeds: List[int]) -> List[dict]:
    """Check the backbone names, regimes, heads and seeds before anything runs; one training per backbone, regime,
    head and seed."""
    from cxr.training.plan import plan_runs

    return plan_runs(backbones, seeds, regimes, heads)
