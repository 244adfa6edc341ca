"""What a retrain trigger (the Airflow DAG's params, CI's workflow inputs) may set.

Whoever can trigger a run is not the operator of the workers: a trigger's values are untrusted.
They become Hydra overrides only after Hydra's own parser has read them and they passed this
gate: no interpolation (`${oc.env:...}` would read the worker's environment into MLflow), no
added or deleted keys, and only keys from the allow-list below, which names model and training
hyperparameters and the choice among the shipped data configs. Paths, URIs and directories
(tracking.uri, data.cache_dir, data.params.path, trainer.checkpoint_dir, retrain.output_dir) come
from the deployment's environment, never from a trigger.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.cli import CONF_DIR, group_options, parse_overrides
from pipeline.config import model_variants
from pipeline.errors import ConfigError

# Exact keys and key prefixes (ending in '.') a trigger may override.
TRIGGER_KEYS = (
    "model", "model.name", "model.hidden_size", "model.num_layers", "model.dropout",
    "model.bidirectional", "model.init_state", "model.cell", "model.teacher_forcing",
    "model.recurrent_l2", "optim.", "seed", "promotion.metric", "retrain.variants", "retrain.max_mase",
    "trainer.max_epochs", "trainer.early_stopping_patience", "trainer.gradient_clip_val",
    "data.lookback", "data.horizon", "data.batch_size", "data.split.",
)
# Shipped data configs a trigger may pick: not csv, whose only purpose is a path.
TRIGGER_DATA = tuple(name for name in group_options(CONF_DIR, "data") if name != "csv")


def allowed(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in TRIGGER_KEYS)


def check_value(label: str, text: str) -> None:
    if "$" in text and "{" in text:  # ${...}, however it is quoted or spaced
        raise ConfigError(f"{label}: interpolations (${{...}}) are not accepted from a trigger")


def gate(overrides: Sequence[str]) -> list[str]:
    """The trigger's overrides, each parsed and allowed; anything else is a one-line ConfigError."""
    for text in overrides:
        if not isinstance(text, str):
            raise ConfigError(f"override {text!r}: must be a string such as trainer.max_epochs=50")
        check_value(f"override {text!r}", text)
    for override in parse_overrides(list(overrides)):
        key = override.key_or_group
        if override.is_add() or override.is_force_add() or override.is_delete():
            raise ConfigError(f"override {override.input_line!r}: a trigger may change keys, not add or "
                              "delete them")
        if override.is_sweep_override():
            raise ConfigError(f"override {override.input_line!r}: a trigger sets one value per key")
        if key == "data":
            choose_data(override.get_value_element_as_str())
        elif not allowed(key):
            raise ConfigError(f"override {override.input_line!r}: {key} is not settable from a trigger "
                              "(paths, URIs and directories come from the deployment); allowed: "
                              f"{', '.join(TRIGGER_KEYS)}")
    return list(overrides)


def choose_data(data: str) -> str:
    check_value("data", data)
    if data not in TRIGGER_DATA:
        raise ConfigError(f"data={data!r} is not a data config a trigger may choose; choose one of: "
                          f"{', '.join(TRIGGER_DATA)}")
    return data


def choose_variants(variants: Sequence[str]) -> list[str]:
    known = model_variants()
    for variant in variants:
        if not isinstance(variant, str):
            raise ConfigError(f"variants: {variant!r} is not a variant name")
        check_value("variants", variant)
        if variant not in known:
            raise ConfigError(f"variants: {variant!r} is not a model variant; choose from {', '.join(known)}")
    return list(variants)


def overrides_from_params(data: str, variants: Sequence[str], overrides: Sequence[str] = ()) -> list[str]:
    """A trigger's params (data config, variants, extra overrides) -> checked Hydra overrides."""
    names = ",".join(choose_variants(variants))
    return [f"data={choose_data(data)}", f"retrain.variants=[{names}]", *gate(overrides)]
