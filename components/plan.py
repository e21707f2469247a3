from typing import List

from kfp import dsl

from cxr import settings


@dsl.component(base_image=settings.COMPONENT_IMAGE, install_kfp_package=False)
def plan_trainings(backbones: List[str], regimes: List[str], heads: List[str], learning_rates: List[float],
                   seeds: List[int]) -> List[dict]:
    """Check the backbone names, regimes, heads, learning rates and seeds before anything runs; one training per
    backbone, regime, head, learning rate and seed (a probe fitted by scikit-learn once per seed)."""
    from cxr.training.plan import plan_runs

    return plan_runs(backbones, seeds, regimes, heads, learning_rates)
