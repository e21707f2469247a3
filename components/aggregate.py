from typing import List

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Model, Output

from cxr import settings


@dsl.component(base_image=settings.COMPONENT_IMAGE, install_kfp_package=False)
def aggregate_results(processed: Input[Dataset], results: Input[List[Artifact]], explanations: Input[List[Artifact]],
                      models: Input[List[Model]], report: Output[HTML], leaderboard: Output[Markdown],
                      plots: Output[Artifact], best_model: Output[Model]) -> str:
    """Compare every evaluated backbone, each at the learning rate chosen on validation: report.html (rendered by
    the KFP UI, with where each backbone looks and the model card), the leaderboard, tuning.csv, the graphs; export
    the best of the ranked trainings (on validation) as a SavedModel for TF Serving or KServe. Returns '' when
    every training finished, else the line naming the missing ones (the verdict step fails on it)."""
    import shutil
    from pathlib import Path

    from cxr import files
    from cxr.failures import run_verdict
    from cxr.results.report import write_report
    from cxr.results.tuning import ranked_folders
    from cxr.serving.export import export_best_of

    folders = sorted(Path(r.path) for r in results)
    explained = sorted(Path(e.path) for e in explanations if (Path(e.path) / files.EXPLAIN_SUMMARY).is_file())
    written, failures = write_report(folders, Path(plots.path), explain_dirs=explained, data_dir=Path(processed.path))
    shutil.copyfile(written[files.REPORT_HTML], report.path)
    shutil.copyfile(written[files.LEADERBOARD_MD], leaderboard.path)
    plots.metadata.update({"files": sorted(written), "missing": [f.line() for f in failures]})
    best_model.metadata["backbone"] = export_best_of([Path(m.path) for m in models], ranked_folders(folders),
                                                  Path(best_model.path))
    return run_verdict(failures, len(folders))
