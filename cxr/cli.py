"""`cxr`: the study from the command line, one subcommand per pipeline step.

    cxr synth OUT                          a synthetic Kaggle-layout dataset
    cxr ingest --source SRC --out DIR      kaggle, a folder, a .zip or gs:// -> DIR/{split}/{class}/
    cxr preprocess --raw DIR --out DIR     leak-free split, sharded TFRecords, manifest.csv, stats.json
    cxr train --data DIR --backbone NAME --out DIR
    cxr evaluate --data DIR --model DIR --out DIR
    cxr report RESULT_DIR... --out DIR
    cxr explain --data DIR --model DIR --result DIR --out DIR   Grad-CAM panels and the pointing game
    cxr predict --model DIR FILM...        P(pneumonia) and the decision for new films
    cxr export --model DIR --out DIR       a SavedModel for TF Serving and KServe
    cxr serve --model DIR                  a KServe model server (REST v1 and v2) on 127.0.0.1:8080
    cxr submit / upload / cluster-ready / kaggle-secret   the cluster path (make run, make upload, make deploy)
    cxr gpus                               the GPUs this process sees
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from pathlib import Path

from cxr import settings
from cxr.devices import DEVICES
from cxr.errors import UserError


def _synth(args: argparse.Namespace) -> None:
    from cxr.data.synth import synthesize

    counts = synthesize(args.out, per_class=args.per_class, seed=args.seed, min_size=args.min_size,
                        max_size=args.max_size)
    print(f"wrote {Path(args.out) / 'chest_xray'}: {json.dumps(counts)}")


def _ingest(args: argparse.Namespace) -> None:
    from cxr.data.ingest import ingest

    report = ingest(args.source, args.out, cache=args.cache)
    print(f"ingested into {args.out}: {json.dumps(report.counts)}; dropped {len(report.duplicates)} duplicate(s), "
          f"{report.macos_debris} macOS file(s), {len(report.outside_layout)} file(s) outside the layout")


def _preprocess(args: argparse.Namespace) -> None:
    from cxr.data.preprocess import Settings, preprocess

    stats = preprocess(args.raw, args.out, Settings(args.image_size, args.val_fraction, args.split, args.seed))
    print(f"wrote {args.out}: {json.dumps(stats['counts'])}; skipped {len(stats['skipped'])} file(s); "
          f"{len(stats['patients_in_several_splits'])} patient(s) in several splits")


def _train(args: argparse.Namespace) -> None:
    from cxr.training.train import TrainSettings, train

    metrics = train(args.data, args.out, TrainSettings.from_values(vars(args)), checkpoint=args.checkpoint,
                    device=args.device, features=args.features)
    print(f"trained {metrics['backbone']} in {metrics['learning_time']} ({metrics['epochs_run']} epochs, "
          f"best {metrics['best_epoch']}, val_acc {metrics['best']['val_accuracy']:.4f}) -> {args.out}")


def _evaluate(args: argparse.Namespace) -> None:
    from cxr.results.evaluate import evaluate

    metrics = evaluate(args.data, args.model, args.out, batch_size=args.batch_size)
    at_default = metrics["at_default_threshold"]
    print(f"{metrics['backbone']} on {metrics['test_images']} test images: "
          f"accuracy {at_default['accuracy']['value']:.4f}, sensitivity {at_default['sensitivity']['value']:.4f}, "
          f"specificity {at_default['specificity']['value']:.4f}, ROC AUC {metrics['roc_auc']['value']:.4f} "
          f"-> {args.out}")


def _report(args: argparse.Namespace) -> None:
    from cxr.results.report import write_report

    written, failures = write_report(args.results, args.out, explain_dirs=args.explanations, data_dir=args.data)
    for failure in failures:
        print(f"report: missing {failure.line()}", file=sys.stderr)
    print(f"wrote {len(written)} files; open {written['report.html']}")


def _explain(args: argparse.Namespace) -> None:
    from cxr.results.explain import explain

    summary = explain(args.data, args.model, args.result, args.out, films=args.films, lesions=args.lesions)
    game = summary.get("pointing_game")
    print(f"{summary['backbone']}: Grad-CAM of {summary['layer']} for {len(summary['films'])} test films -> {args.out}"
          + (f"; pointing game {game['hit_rate']:.3f} on {game['films']} films (random {game['random_rate']:.3f})"
             if game else ""))


def _predict(args: argparse.Namespace) -> None:
    from cxr.serving.predict import check_output, predict_files, write_predictions
    if args.out is not None:
        check_output(args.out)
    table = predict_files(args.model, args.films, result_dir=args.result, threshold=args.threshold,
                          batch_size=args.batch_size)
    write_predictions(table, args.out)
    failed = int((table["error"] != "").sum())
    if args.out is not None or failed:
        print(f"predicted {len(table) - failed} film(s)" + (f", {failed} unreadable" if failed else "")
              + (f" -> {args.out}" if args.out is not None else ""), file=sys.stderr)


def _export(args: argparse.Namespace) -> None:
    from cxr.serving.export import export

    path = export(args.model, args.out, result_dir=args.result, threshold=args.threshold)
    print(f"exported the SavedModel to {path} (signature serving_default: image_bytes -> probability, decision)")


def _serve(args: argparse.Namespace) -> None:
    try:
        from cxr.serving.server import serve
    except ModuleNotFoundError as error:
        if (error.name or "").partition(".")[0] not in ("kserve", "fastapi", "uvicorn"):
            raise
        raise UserError(f"the serve extra is not installed ({error.name} is missing): pip install -e '.[serve]', "
                        "or make install") from None
    serve(args.model, result_dir=args.result, threshold=args.threshold, name=args.name, host=args.host,
          port=args.port)


def _submit(args: argparse.Namespace) -> None:
    from cxr.cluster import parse_arguments, submit

    outcome = submit(args.host, args.package, parse_arguments(args.arg), args.experiment, wait=not args.no_wait)
    if outcome.state not in ("SUCCEEDED", "SUBMITTED"):
        raise UserError(f"run {outcome.run_id} ended {outcome.state}: see {outcome.url}")
    if outcome.state == "SUCCEEDED":
        print(f"run: the report is the 'report' (HTML) output of the aggregate task: {outcome.url}")


def _upload(args: argparse.Namespace) -> None:
    from cxr.cluster import upload

    upload(args.host, args.package)


def _cluster_ready(args: argparse.Namespace) -> None:
    from cxr.cluster import wait_until_ready

    wait_until_ready(args.namespace, args.timeout, need_gpu=not args.no_gpu, image=args.image,
                     poll_seconds=args.poll)


def _kaggle_secret(args: argparse.Namespace) -> None:
    from cxr.cluster import create_kaggle_secret

    create_kaggle_secret(args.namespace)


def _gpus(args: argparse.Namespace) -> None:
    from cxr.devices import backend, visible_gpus

    gpus = visible_gpus()
    if not gpus:
        raise UserError(f"no GPU visible to {backend()}")
    for index, name in enumerate(gpus):
        print(f"GPU {index}: {name}")


def _switch(value: str) -> bool | None:
    choices = {"auto": None, "on": True, "off": False}
    if value not in choices:
        raise argparse.ArgumentTypeError("expected auto, on or off")
    return choices[value]


def _add_train_options(sub: argparse.ArgumentParser) -> None:
    """One flag per TrainSettings option, with its declared default, help and type; an option without a default
    is required, a bool is a switch, and `bool | None` is auto/on/off."""
    from cxr.training.plan import TrainSettings, flag

    types = typing.get_type_hints(TrainSettings)
    for option in TrainSettings.options():
        extra: dict = {"required": True} if option.default is dataclasses.MISSING else {"default": option.default}
        kind = types[option.name]
        if kind is bool:
            extra["action"] = "store_true"
        elif kind == bool | None:
            extra.update(type=_switch, metavar="{auto,on,off}")
        else:
            extra["type"] = kind
        sub.add_argument(flag(option.name), dest=option.name, help=option.metadata["help"], **extra)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxr", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, handler, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text,
                                  formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        sub.set_defaults(handler=handler)
        return sub

    sub = command("synth", _synth, "write a synthetic Kaggle-layout dataset to OUT/chest_xray/")
    sub.add_argument("out", type=Path, metavar="OUT")
    sub.add_argument("--per-class", type=int, default=100, help="NORMAL training images; 3x as many PNEUMONIA")
    sub.add_argument("--seed", type=int, default=settings.SEED)
    sub.add_argument("--min-size", type=int, default=1000, help="smallest film height in pixels")
    sub.add_argument("--max-size", type=int, default=2500, help="largest film height in pixels")

    sub = command("ingest", _ingest, "fetch the dataset and normalise it to DIR/{train,val,test}/{NORMAL,PNEUMONIA}/")
    sub.add_argument("--source", required=True, help="kaggle, a folder, a .zip, or gs://bucket/prefix")
    sub.add_argument("--out", required=True, type=Path)
    sub.add_argument("--cache", help="gs://bucket/prefix: read the dataset from here, or store it here once")

    sub = command("preprocess", _preprocess, "split by patient and write sharded TFRecords")
    sub.add_argument("--raw", required=True, type=Path, help="the folder `cxr ingest` wrote")
    sub.add_argument("--out", required=True, type=Path)
    sub.add_argument("--image-size", type=int, default=settings.PROCESSED_IMAGE_SIZE)
    sub.add_argument("--val-fraction", type=float, default=settings.VAL_FRACTION)
    sub.add_argument("--split", choices=settings.SPLIT_MODES, default=settings.SPLIT_MODE)
    sub.add_argument("--seed", type=int, default=settings.SEED)

    sub = command("train", _train, "train one backbone; rerun on the same --out to resume")
    sub.add_argument("--data", required=True, type=Path, help="the folder `cxr preprocess` wrote")
    sub.add_argument("--out", required=True, type=Path)
    _add_train_options(sub)
    sub.add_argument("--checkpoint", type=Path, help="checkpoint folder (default OUT/checkpoint)")
    sub.add_argument("--features", type=Path, help="the feature cache of --regime frozen, shared by every seed "
                     f"(default: a {settings.FEATURES_DIR} folder beside the checkpoint folder)")
    sub.add_argument("--device", choices=DEVICES, default="auto",
                     help="auto: a GPU when one is visible; gpu: exit 2 at once without one; cpu: ignore GPUs")

    sub = command("evaluate", _evaluate, "evaluate a trained backbone on the test split")
    sub.add_argument("--data", required=True, type=Path)
    sub.add_argument("--model", required=True, type=Path, help="the --out folder of `cxr train`")
    sub.add_argument("--out", required=True, type=Path)
    sub.add_argument("--batch-size", type=int, default=settings.BATCH_SIZE)

    sub = command("report", _report, "compare evaluated backbones: graphs, leaderboard, report.html")
    sub.add_argument("results", nargs="+", type=Path, metavar="RESULT_DIR", help="--out folders of `cxr evaluate`")
    sub.add_argument("--explanations", nargs="+", type=Path, default=[], metavar="EXPLAIN_DIR",
                     help="--out folders of `cxr explain`: the report shows where each backbone looks")
    sub.add_argument("--data", type=Path, help="the folder `cxr preprocess` wrote: the report ends with a model card")
    sub.add_argument("--out", required=True, type=Path)

    sub = command("explain", _explain, "Grad-CAM of test films and, with --lesions, the pointing game")
    sub.add_argument("--data", required=True, type=Path, help="the folder `cxr preprocess` wrote")
    sub.add_argument("--model", required=True, type=Path, help="the --out folder of `cxr train`")
    sub.add_argument("--result", type=Path, help="the --out folder of `cxr evaluate` (default: --model)")
    sub.add_argument("--out", required=True, type=Path)
    sub.add_argument("--films", type=int, default=settings.EXPLAIN_FILMS, help="films in the panel")
    sub.add_argument("--lesions", type=Path, help="lesions.csv (written by `cxr synth`) for the pointing game")

    threshold_help = "decision threshold (default: thresholds.validation of --result's metrics.json)"
    sub = command("predict", _predict, "P(pneumonia) and the decision at the validation threshold for films")
    sub.add_argument("films", nargs="+", type=Path, metavar="FILM", help="JPEG or PNG files")
    sub.add_argument("--model", required=True, type=Path, help="the --out folder of `cxr train`")
    sub.add_argument("--result", type=Path, help="the --out folder of `cxr evaluate` (default: --model)")
    sub.add_argument("--threshold", type=float, help=threshold_help)
    sub.add_argument("--out", type=Path, help="CSV to write (never over an existing file); default stdout")
    sub.add_argument("--batch-size", type=int, default=settings.BATCH_SIZE)

    sub = command("export", _export, "a TensorFlow SavedModel taking encoded JPEG/PNG bytes, for TF Serving/KServe")
    sub.add_argument("--model", required=True, type=Path, help="the --out folder of `cxr train`")
    sub.add_argument("--result", type=Path, help="the --out folder of `cxr evaluate` (default: --model)")
    sub.add_argument("--threshold", type=float, help=threshold_help)
    sub.add_argument("--out", required=True, type=Path, help="a new folder; the model goes to OUT/1/")

    sub = command("serve", _serve, "serve a trained model over HTTP (KServe REST v1 and v2) until SIGTERM")
    sub.add_argument("--model", required=True, type=Path, help="the --out folder of `cxr train`")
    chosen = sub.add_mutually_exclusive_group()
    chosen.add_argument("--result", type=Path, help="the --out folder of `cxr evaluate` (default: --model)")
    chosen.add_argument("--threshold", type=float, help=threshold_help)
    sub.add_argument("--name", default=settings.SERVE_MODEL_NAME, help="the model's name in the URLs")
    sub.add_argument("--host", default=settings.SERVE_HOST, help="the address to listen on; 0.0.0.0 for every one")
    sub.add_argument("--port", type=int, default=settings.SERVE_PORT, help="0: any free port")

    package = Path("pipelines/chest_xray_benchmark.yaml")
    sub = command("submit", _submit, "submit the compiled pipeline to KFP, wait, print the run's URL and state")
    sub.add_argument("--host", required=True, help="the KFP endpoint, e.g. http://localhost:8080")
    sub.add_argument("--package", type=Path, default=package)
    sub.add_argument("--experiment", default=settings.PIPELINE_NAME)
    sub.add_argument("--arg", action="append", default=[], metavar="NAME=VALUE",
                     help="a pipeline argument; VALUE as JSON where it parses (repeatable)")
    sub.add_argument("--no-wait", action="store_true", help="return after submitting")

    sub = command("upload", _upload, "upload the compiled pipeline as a new version, for the KFP UI")
    sub.add_argument("--host", required=True)
    sub.add_argument("--package", type=Path, default=package)

    sub = command("cluster-ready", _cluster_ready, "wait until KFP's deployments are available and a GPU is visible, "
                  "then check that a pod on the GPU node sees it (`cxr gpus`)")
    sub.add_argument("--namespace", default="kubeflow")
    sub.add_argument("--timeout", type=float, default=900, help="seconds, the GPU check included")
    sub.add_argument("--poll", type=float, default=10, help="seconds between checks")
    sub.add_argument("--image", default=settings.COMPONENT_IMAGE, help="the image of the GPU check pod")
    sub.add_argument("--no-gpu", action="store_true", help="skip the GPU checks (the device plugin, the GPU pod)")

    sub = command("kaggle-secret", _kaggle_secret,
                  "create the optional Kaggle secret from KAGGLE_USERNAME and KAGGLE_KEY in the environment")
    sub.add_argument("--namespace", default="kubeflow")

    command("gpus", _gpus, "list the GPUs training would use; exit 2 when there is none (cluster-ready runs it)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings.check_environment()
        args.handler(args)
    except UserError as error:
        print(f"cxr {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C (or `cxr serve`'s SIGTERM while loading): one line, not a traceback
        print(f"cxr {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
