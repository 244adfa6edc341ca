"""A retrain trigger (the DAG's params) is untrusted: the gate lets through hyperparameters and
shipped data configs, and refuses interpolations, paths, URIs and directories in one line."""

from __future__ import annotations

import pytest

from pipeline.cli import load_config
from pipeline.errors import ConfigError
from pipeline.retraining.triggers import TRIGGER_DATA, gate, overrides_from_params

ATTACKS = [
    # read the worker's environment into MLflow tags and params
    ("env-into-study-tag", "sine", ["lstm"], ["study=${oc.env:TUSHARE_TOKEN}"], "interpolation"),
    ("env-into-new-param", "sine", ["lstm"], ["+data.params.conn=${oc.env:SOME_DB_URL}"], "interpolation"),
    ("env-quoted", "sine", ["lstm"], ["model.hidden_size='${oc.env:HOME}'"], "interpolation"),
    ("env-in-variants", "sine", ["${oc.env:TUSHARE_TOKEN}"], [], "interpolation"),
    ("env-in-model-name", "sine", ["lstm"], ["model.name=${oc.env:TUSHARE_TOKEN}"], "interpolation"),
    ("env-in-data", "${oc.env:HOME}", ["lstm"], [], "interpolation"),
    # read any file the worker can read (its first line came back in the "available:" list)
    ("csv-of-a-system-file", "csv", ["lstm"], ["data.params.path=/etc/passwd", "data.inputs=[x]"], "data='csv'"),
    ("path-on-shipped-data", "sine", ["lstm"], ["data.params.path=/etc/passwd"], "not settable"),
    # write where they choose, send the run elsewhere
    ("checkpoint-dir", "sine", ["lstm"], ["trainer.checkpoint_dir=/etc"], "not settable"),
    ("cache-dir", "sine", ["lstm"], ["data.cache_dir=/tmp/x"], "not settable"),
    ("output-dir", "sine", ["lstm"], ["retrain.output_dir=/tmp/x"], "not settable"),
    ("tracking-uri", "sine", ["lstm"], ["tracking.uri=http://attacker:5000"], "not settable"),
    ("artifact-root", "sine", ["lstm"], ["tracking.artifact_root=/tmp/x"], "not settable"),
    # reshape the config
    ("delete-key", "sine", ["lstm"], ["~trainer.resume"], "add or delete"),
    ("add-key", "sine", ["lstm"], ["+trainer.foo=1"], "add or delete"),
    ("sweep", "sine", ["lstm"], ["model.hidden_size=8,16"], "one value"),
    ("unknown-variant", "sine", ["nope"], [], "not a model variant"),
    ("not-a-string", "sine", ["lstm"], [5], "must be a string"),
    ("bad-grammar", "sine", ["lstm"], ["model.hidden_size=[1"], "not a valid override"),
]


@pytest.mark.parametrize(("data", "variants", "overrides", "why"),
                         [pytest.param(d, v, o, w, id=i) for i, d, v, o, w in ATTACKS])
def test_a_trigger_cannot_reach_the_environment_files_or_paths(data, variants, overrides, why) -> None:
    with pytest.raises(ConfigError, match=why) as refused:
        overrides_from_params(data, variants, overrides)
    assert "\n" not in str(refused.value)


def test_hyperparameters_and_shipped_data_pass_and_compose() -> None:
    overrides = overrides_from_params("sst", ["lstm", "gru"], ["model.hidden_size=8", "optim.lr=0.001",
                                                               "trainer.max_epochs=3", "data.lookback=12"])
    cfg = load_config("retrain", overrides)
    assert (cfg.data.name, cfg.retrain.variants) == ("sst", ["lstm", "gru"])
    assert (cfg.model.hidden_size, cfg.optim.lr, cfg.trainer.max_epochs, cfg.data.lookback) == (8, 0.001, 3, 12)


def test_a_trigger_may_choose_every_shipped_data_config_but_csv() -> None:
    assert "csv" not in TRIGGER_DATA and {"sine", "stock", "sst"} <= set(TRIGGER_DATA)
    assert gate([]) == []
