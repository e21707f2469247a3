from typing import List

from kfp import dsl
from kfp.dsl import HTML, Artifact, Input, Markdown, Output

from cxr import settings


@dsl.component(base_image=settings.COMPONENT_IMAGE, install_kfp_package=False)
def aggregate_results(results: Input[List[Artifact]], report: Output[HTML], leaderboard: Output[Markdown],
                      plots: Output[Artifact]) -> str:
    """Compare every evaluated backbone: report.html (rendered by the KFP UI), the leaderboard, the graphs.
    Returns '' when every training finished, else the line naming the missing ones (the verdict step fails on it)."""
    import shutil
    from pathlib import Path

    from cxr import files
    from cxr.failures import run_verdict
    from cxr.results.report import write_report

    folders = sorted(Path(r.path) for r in results)
    written, failures = write_report(folders, Path(plots.path))
    shutil.copyfile(written[files.REPORT_HTML], report.path)
    shutil.copyfile(written[files.LEADERBOARD_MD], leaderboard.path)
    plots.metadata.update({"files": sorted(written), "missing": [f.line() for f in failures]})
    return run_verdict(failures, len(folders))
