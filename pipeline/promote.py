"""`make promote`: python -m pipeline.promote [data=...] [promotion.version=N].

Offers a registered version (default: the latest) to @champion: it moves only if the version
beats the current champion on the same test windows; the decision is recorded as version tags.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.cli import run_command
from pipeline.config import TrainConfig, tracking_store


def promote_and_report(cfg: TrainConfig) -> None:
    # Lazy: MLflow and torch load after the command line passed (a bad value fails in ~1 s).
    from pipeline.tracking.champion import latest_version, promote_if_better

    store = tracking_store(cfg.tracking)
    store.check()
    name = cfg.tracking.registered_model
    version = cfg.promotion.version or latest_version(store.client, name)
    decision = promote_if_better(store, name, str(version), cfg.promotion.metric,
                                 cfg.promotion.direction, task=cfg.data.task)
    verdict = "promoted to @champion" if decision.promoted else "not promoted"
    print(f"{decision.model_name} v{decision.version}: {verdict} ({decision.reason})", flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    run_command("train", promote_and_report, argv)


if __name__ == "__main__":
    main()
