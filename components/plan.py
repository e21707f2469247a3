from typing import List

from kfp import dsl

from cxr import settings


@dsl.component(base_image=settings.COMPONENT_IMAGE, install_kfp_package=False)
def plan_trainings(backbones: List[str], regimes: List[str], learning_rates: List[float],
                    seeds: List[int]) -> List[dict]:
    """Check the backbone names, regimes, learning rates and seeds before anything runs; one training per
    backbone, regime, learning rate and seed."""
    from cxr.training.plan import plan_runs

    return plan_runs(backbones, seeds, regimes, learning_rates)
