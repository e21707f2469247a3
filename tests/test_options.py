"""Training options are declared once, in TrainSettings: the CLI is built from the declarations, and the train
component's and the pipeline's parameters (which KFP reads from their source) must agree with them."""

from __future__ import annotations

import dataclasses
import typing

import yaml

from components import train_backbone
from cxr.cli import build_parser
from cxr.training.plan import CLI_ONLY, PER_RUN, PIPELINE, TrainSettings
from pipelines.chest_xray_benchmark import YAML, chest_xray_benchmark

KFP_TYPES = {int: "Integer", float: "Float", str: "String", bool: "Boolean"}
# The train component's parameters that are not training options: where and how the task runs.
TASK_PARAMETERS = {"processed", "device", "checkpoint_root", "run_id"}


def test_every_option_has_a_flag_its_default_and_help_and_parses_into_the_settings():
    changed = {"backbone": "vgg16", "epochs": 3, "batch_size": 8, "learning_rate": 0.25, "dense_units": 4,
               "dropout": 0.25, "image_size": 48, "weights": "none", "regime": "frozen", "head": "linear",
               "patience": 2, "seed": 9, "mixed_precision": False, "xla": True}
    assert set(changed) == {option.name for option in TrainSettings.options()}, "a new option: add it here"
    words = []
    for action in build_parser()._subparsers._group_actions[0].choices["train"]._actions:
        if action.dest in changed:
            value = changed[action.dest]
            if isinstance(value, bool) and action.nargs == 0:
                words.append(action.option_strings[0])
            else:
                words += [action.option_strings[0], {True: "on", False: "off"}.get(value, str(value))]
            option = next(o for o in TrainSettings.options() if o.name == action.dest)
            assert action.help == option.metadata["help"]
            assert action.required == (option.default is dataclasses.MISSING)
    args = build_parser().parse_args(["train", "--data", "d", "--out", "o", *words])
    assert TrainSettings.from_values(vars(args)) == TrainSettings(**changed)
    defaults = build_parser().parse_args(["train", "--data", "d", "--out", "o", "--backbone", "MobileNet"])
    assert TrainSettings.from_values(vars(defaults)) == TrainSettings(backbone="MobileNet")


def test_the_train_component_takes_every_pipeline_and_per_run_option_with_its_type():
    types = typing.get_type_hints(TrainSettings)
    inputs = train_backbone.component_spec.inputs
    wanted = TrainSettings.options(PIPELINE) + TrainSettings.options(PER_RUN)
    for option in wanted:
        assert option.name in inputs, f"components/train.py lacks the option {option.name}"
        assert inputs[option.name].type == KFP_TYPES[types[option.name]], option.name
    assert set(inputs) == {option.name for option in wanted} | TASK_PARAMETERS
    assert not {option.name for option in TrainSettings.options(CLI_ONLY)} & set(inputs)


def test_the_pipeline_has_every_pipeline_option_with_the_declared_default_and_hands_it_to_each_training():
    types = typing.get_type_hints(TrainSettings)
    inputs = chest_xray_benchmark.component_spec.inputs
    for option in TrainSettings.options(PIPELINE):
        assert option.name in inputs, f"pipelines/chest_xray_benchmark.py lacks the parameter {option.name}"
        assert inputs[option.name].type == KFP_TYPES[types[option.name]], option.name
        assert inputs[option.name].default == option.default, option.name
    # In the committed YAML, each train task's option is the pipeline parameter of the same name.
    spec = next(yaml.safe_load_all(YAML.read_text()))  # the pipeline spec; the platform spec follows
    loop = spec["components"]["comp-for-loop-1"]["dag"]["tasks"]["train-backbone"]["inputs"]["parameters"]
    for option in TrainSettings.options(PIPELINE):
        assert loop[option.name] == {"componentInputParameter": f"pipelinechannel--{option.name}"}, option.name


def test_each_training_takes_its_per_run_options_from_the_plan():
    # backbone, regime, learning rate and seed differ between the trainings: each train task reads them from its
    # item of the plan step's list, never from a pipeline parameter (the pipeline has learning_rates, a list).
    spec = next(yaml.safe_load_all(YAML.read_text()))
    loop = spec["components"]["comp-for-loop-1"]["dag"]["tasks"]["train-backbone"]["inputs"]["parameters"]
    for option in TrainSettings.options(PER_RUN):
        assert loop[option.name] == {"componentInputParameter": "pipelinechannel--plan-trainings-Output-loop-item",
                                     "parameterExpressionSelector": f'parseJson(string_value)["{option.name}"]'}
    assert "learning_rate" not in chest_xray_benchmark.component_spec.inputs
    assert chest_xray_benchmark.component_spec.inputs["learning_rates"].default == [1e-5]
