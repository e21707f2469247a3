from typing import List

from kfp import dsl
from kfp.dsl import HTML, Artifact, Input, Markdown, Output

from cxr import settings


@dsl.component(base_image=settings.COMPONENT_IMAGE, install_kfp_package=False)
def aggregate_results(results: Input[List[Artifact]], report: Output[HTML], leaderboard: Output[Markdown],
                      plots: Output[Artifact]):
    """Compare every evaluated backbone: report.html (rendered by the KFP UI), the leaderboard, the graphs."""
    import shutil
    from pathlib import Path

    from cxr import files
    from cxr.results.report import write_report

    written = write_report(sorted(Path(r.path) for r in results), Path(plots.path))
    shutil.copyfile(written[files.REPORT_HTML], report.path)
    shutil.copyfile(written[files.LEADERBOARD_MD], leaderboard.path)
    plots.metadata["files"] = sorted(written)
