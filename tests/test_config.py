"""The schema: every shipped config composes into it, the YAML files keep only what differs, the
README's reference is the schema's own table, and every entry point reads it the same way."""

from __future__ import annotations

import itertools
import re
from dataclasses import MISSING

import pytest
import yaml

from pipeline.cli import CONF_DIR, expand, group_options, load_config, parse_overrides
from pipeline.config import (
    DataConfig,
    ModelConfig,
    TrainConfig,
    TrainerConfig,
    as_dict,
    reference_markdown,
)
from pipeline.errors import ConfigError
from tests.conftest import REPO

DATA = group_options(CONF_DIR, "data")
MODELS = [m for m in group_options(CONF_DIR, "model") if m != "seq2seq"]


@pytest.mark.parametrize(("data", "model"), list(itertools.product(DATA, MODELS)))
def test_every_shipped_data_and_model_config_loads_typed(data: str, model: str) -> None:
    files = ("csv", "universe_file")
    extra = ["data.params.path=prices.csv"] if data in files else []
    cfg = load_config("train", [f"data={data}", f"model={model}", *extra])
    assert isinstance(cfg, TrainConfig) and isinstance(cfg.data, DataConfig)
    assert isinstance(cfg.model, ModelConfig) and isinstance(cfg.trainer, TrainerConfig)
    assert cfg.model.name == model and cfg.data.name == (data if data not in files else "prices")
    assert cfg.tracking.registered_model == f"{cfg.data.name}-forecaster"


def test_yaml_files_keep_only_what_differs_from_the_schema() -> None:
    """A key a YAML file sets to the schema's own default is noise: the schema carries it."""
    defaults = {"data": DataConfig, "model": ModelConfig, "trainer": TrainerConfig}
    for group, schema in defaults.items():
        fields = schema.__dataclass_fields__
        for path in (CONF_DIR / group).glob("*.yaml"):
            values = yaml.safe_load(path.read_text()) or {}
            for key, value in values.items():
                if key in ("defaults", "name") or key not in fields:  # a name identifies its file
                    continue
                default = fields[key].default  # dataclasses.MISSING for list/dict fields and required keys
                if default is not MISSING and default is not None and value == default:
                    raise AssertionError(f"{path.name}: {key}: {value!r} is the schema's default")


def test_model_variants_differ_only_by_name() -> None:
    for name in ("lstm", "gru", "rnn", "peephole", "coupled"):
        values = yaml.safe_load((CONF_DIR / "model" / f"{name}.yaml").read_text())
        assert values == {"name": name}


def test_readme_reference_is_the_schema_table() -> None:
    readme = (REPO / "README.md").read_text()
    block = re.search(r"<!-- config-reference:start -->\n(.*?)\n<!-- config-reference:end -->", readme, re.S)
    assert block is not None, "README.md lacks the config reference block"
    assert block.group(1).strip() == reference_markdown().strip(), \
        "README.md's config reference is stale: paste `make config-reference` between the markers"


def test_params_are_the_sections_of_this_command_only() -> None:
    train = as_dict(load_config("train"))
    assert "retrain" not in train and "runner" not in train and train["study"] is None
    assert as_dict(load_config("retrain"))["retrain"]["variants"] == ["lstm", "gru", "peephole"]


def test_a_multirun_is_the_product_of_its_sweeps_and_each_job_is_checked() -> None:
    jobs = expand(parse_overrides(["model=lstm,gru", "model.hidden_size=8,16", "seed=1"]), multirun=True)
    assert jobs == [["model=lstm", "model.hidden_size=8", "seed=1"], ["model=lstm", "model.hidden_size=16", "seed=1"],
                    ["model=gru", "model.hidden_size=8", "seed=1"], ["model=gru", "model.hidden_size=16", "seed=1"]]
    with pytest.raises(ConfigError, match="-m"):
        expand(parse_overrides(["model=lstm,gru"]), multirun=False)


def test_non_ascii_column_names_need_quotes_and_then_work() -> None:
    cfg = load_config("train", ["data=csv", "data.params.path=x.csv", "data.date_column='日期'",
                                "data.inputs=['收盘价']", "data.targets=['收盘价']"])
    assert (cfg.data.date_column, cfg.data.inputs) == ("日期", ["收盘价"])
    with pytest.raises(ConfigError, match="quote"):
        load_config("train", ["data.date_column=日期"])


def test_a_classification_task_ranks_on_a_classification_metric() -> None:
    assert load_config("train", ["data=binary_add"]).promotion.metric == "log_loss"
    assert load_config("train", ["data=binary_add", "promotion.metric=exact_match"]).promotion.direction == "maximize"
    with pytest.raises(ConfigError, match="promotion.metric='mse'"):
        load_config("train", ["data=binary_add", "promotion.metric=mse"])
