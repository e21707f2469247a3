from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from cxr import settings


@dsl.component(base_image=settings.COMPONENT_IMAGE, install_kfp_package=False)
def explain_backbone(processed: Input[Dataset], model: Input[Model], result: Input[Artifact], films: int,
                     source: str, explanation: Output[Artifact], panel: Output[HTML], pointing: Output[Metrics]):
    """Grad-CAM panels of test films; on a synthetic source (with lesions.csv) the pointing game too."""
    from pathlib import Path

    from cxr.results.explain import explain, explanations_html, find_lesions

    summary = explain(processed.path, model.path, result.path, explanation.path, films=films,
                      lesions=find_lesions(source))
    explanation.metadata["backbone"] = summary["backbone"]
    page = explanations_html([Path(explanation.path)], Path(explanation.path))
    Path(panel.path).write_text(f'<!doctype html><html><head><meta charset="utf-8"></head><body>{page}</body></html>')
    game = summary.get("pointing_game")
    if game:
        pointing.log_metric("pointing_game_hit_rate", round(game["hit_rate"], 4))
        pointing.log_metric("pointing_game_random_rate", round(game["random_rate"], 4))
        pointing.log_metric("pointing_game_films", game["films"])
