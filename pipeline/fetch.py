"""`make fetch`: python -m pipeline.fetch [overrides] (make fetch ARGS="data=stock").

Runs the fetch stage alone (source or cache -> validate -> cache) with the same config as
training, and prints one line: source, rows, date range, digest, cache file, fresh or cached.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.cli import run_command
from pipeline.config import TrainConfig
from pipeline.data.loading import FetchResult, load_data


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
    return value.strftime("%Y-%m-%d") if hasattr(value, "strftime") else str(value)


def fetch_and_report(cfg: TrainConfig) -> None:
    print(summary_line(cfg.data.name, load_data(cfg.data)), flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    run_command("train", fetch_and_report, argv)


if __name__ == "__main__":
    main()
