"""Hydra entry point: python -m pipeline.fetch [overrides] (make fetch ARGS="data=stock").

Runs the fetch stage alone (source or cache -> validate -> cache) with the same config as
training, and prints one line: source, rows, date range, digest, cache file, fresh or cached.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from pipeline.cli import CONF_DIR, check_group_choices, exit_on_pipeline_error
from pipeline.data.fetch import FetchResult, fetch


def summary_line(name: str, result: FetchResult) -> str:
    index = result.frame.index
    span = f"{_label(index[0])}..{_label(index[-1])}" if len(index) else "empty"
    if result.cache_path is None:
        where = "not cached (generated or read locally each run)"
    elif result.from_cache:
        fetched = (result.manifest or {}).get("fetched_at", "earlier")
        where = f"cache {result.cache_path} (from cache, fetched {fetched})"
    else:
        where = f"cache {result.cache_path} (fetched now)"
    return (f"data={name} source={result.source}: {len(result.frame)} rows {span}  "
            f"digest {result.digest}  {where}")


def _label(value: object) -> str:
    stamp = getattr(value, "strftime", None)
    return value.strftime("%Y-%m-%d") if stamp else str(value)


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with exit_on_pipeline_error():
        result = fetch(cfg.data)
    print(summary_line(cfg.data.name, result), flush=True)


if __name__ == "__main__":
    check_group_choices(sys.argv[1:], CONF_DIR)
    main()
