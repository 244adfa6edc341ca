"""Promotion stage on its own: python -m pipeline.promote [data=...] [promotion.version=N].

Moves @champion to the chosen version (default: the latest) only if it beats the current
champion on the same test windows, and records the decision as tags on the version.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from pipeline.cli import CONF_DIR, check_group_choices, exit_on_pipeline_error, quiet_mlflow


def promote_from_config(cfg: DictConfig):
    from mlflow.tracking import MlflowClient

    from pipeline.tracking.registry import latest_version, promote
    from pipeline.tracking.run import check_reachable

    check_reachable(cfg.tracking.uri)
    client = MlflowClient(tracking_uri=cfg.tracking.uri)
    name = cfg.tracking.registered_model
    version = cfg.promotion.version or latest_version(client, name)
    return promote(client, name, version, cfg.promotion.metric, cfg.promotion.direction)


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    quiet_mlflow()
    with exit_on_pipeline_error():
        decision = promote_from_config(cfg)
    verdict = "promoted to @champion" if decision.promoted else "not promoted"
    print(f"{decision.model_name} v{decision.version}: {verdict} ({decision.reason})", flush=True)


if __name__ == "__main__":
    check_group_choices(sys.argv[1:], CONF_DIR)
    main()
