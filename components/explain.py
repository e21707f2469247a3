from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from cxr import settings


@dsl.component(base_image=settings.COMPONENT_IMAGE, install_kfp_package=False)
def explain_backbone(processed: Input[Dataset], model: Input[Model], result: Input[Artifact], films: int,
                     source: str, explanation: Output[Artifact], panel: Output[HTML], pointing: Output[Metrics]):
    """Grad-CAM panels of test films; on a synthetic source (with lesions.csv) the pointing game too. A failed
    training has nothing to explain: its outputs stay empty."""
    from pathlib import Path

    from cxr.results.explain import explain_result, explanations_html
    from cxr.results.render import message_page, page

    summary = explain_result(processed.path, model.path, result.path, explanation.path, films, source)
    if summary is None:
        Path(panel.path).write_text(message_page("This training failed: nothing to explain."))
        return
    explanation.metadata["backbone"] = summary["backbone"]
    Path(panel.path).write_text(page(explanations_html([Path(explanation.path)], Path(explanation.path))))
    game = summary.get("pointing_game")
    if game:
        pointing.log_metric("pointing_game_hit_rate", round(game["hit_rate"], 4))
        pointing.log_metric("pointing_game_random_rate", round(game["random_rate"], 4))
        pointing.log_metric("pointing_game_films", game["films"])
