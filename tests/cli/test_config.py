"""Config schema, YAML loading and the CLI flags generated from it."""

import pytest

from delift_ray.cli import build_parser, config_from_args
from delift_ray.config import DeliftConfig, iter_leaf_fields, load_config
from delift_ray.errors import ConfigError
from tests.helpers import ROOT

BASE = {"data": "d.jsonl", "model": "m", "out": "o"}


def test_defaults_and_keys_other_tools_rely_on():
    cfg = load_config(None, BASE)
    keys = {k for k, _ in iter_leaf_fields()}
    for key in (
        "data",
        "model",
        "out",
        "stage",
        "budget",
        "target",
        "existing",
        "engine.dtype",
        "engine.max_model_len",
        "scoring.block_size",
        "ray.address",
        "ray.num_scorers",
    ):
        assert key in keys
    assert cfg.stage == "instruction" and cfg.budget == 0.3


def test_unknown_key_is_a_one_line_error(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("data: d\nmodel: m\nout: o\nengine:\n  max_model_lenn: 12\n")
    with pytest.raises(ConfigError, match=r"unknown key 'engine.max_model_lenn'"):
        load_config(f)


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match=r"engine.max_model_len"):
        load_config(None, {**BASE, "engine.max_model_len": "lots"})


def test_task_stage_needs_target_and_continual_needs_existing():
    with pytest.raises(ConfigError, match="needs a target set"):
        load_config(None, {**BASE, "stage": "task"})
    with pytest.raises(ConfigError, match="needs existing data"):
        load_config(None, {**BASE, "stage": "continual"})


@pytest.mark.parametrize("value,expected", [("0.25", 0.25), ("7", 7), (0.5, 0.5), (3, 3)])
def test_budget_parsing(value, expected):
    b = load_config(None, {**BASE, "budget": value}).budget
    assert b == expected and type(b) is type(expected)


@pytest.mark.parametrize("value", ["0", "-3", "1.0", "1.5", "0.0", "lots", True])
def test_budget_errors(value):
    with pytest.raises(ConfigError, match="budget"):
        load_config(None, {**BASE, "budget": value})


def test_missing_config_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_flags_override_the_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("data: d\nmodel: m\nout: o\nbudget: 0.3\nengine:\n  dtype: bfloat16\n")
    args = build_parser().parse_args(
        ["select", "--config", str(f), "--budget", "5", "--engine.max-model-len", "300", "--scoring.exclude-self"]
    )
    cfg = config_from_args(args)
    assert cfg.budget == 5 and cfg.engine.max_model_len == 300 and cfg.engine.dtype == "bfloat16"
    assert cfg.scoring.exclude_self is True


def test_templates_need_their_placeholders():
    with pytest.raises(ConfigError, match="query"):
        load_config(None, {**BASE, "templates.no_example": "no placeholder"})


def test_every_job_file_validates():

    jobs = sorted(ROOT.joinpath("jobs").glob("*.yaml"))
    assert jobs, "jobs/ holds example configs"
    for path in jobs:
        load_config(path, {"data": "d", "model": "m", "out": "o"} if "demo" in path.name else None)


def test_schema_round_trips_through_yaml(tmp_path):
    import yaml

    cfg = load_config(None, {**BASE, "stage": "task", "target": "t.jsonl"})
    f = tmp_path / "rt.yaml"
    f.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    assert load_config(f) == cfg
    assert isinstance(cfg, DeliftConfig)
