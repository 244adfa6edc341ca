"""`make fetch`: python -m pipeline.fetch [overrides] (make fetch ARGS="data=stock").

Runs the fetch stage alone (source or cache -> validate -> cache) with the same config as
training, and prints one line: source, rows, date range, digest, cache file, fresh or cached.
A universe (data.layout=universe) is read whole and its line also counts the series: codes
fetched of those asked, naming up to five that failed (their reasons are in the warning above).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pipeline.cli import run_command
from pipeline.config import DataConfig, TrainConfig
from pipeline.data.digest import frame_digest
from pipeline.data.loading import FetchResult, load_data

# How many failed codes the universe line names (all of them are in the loader's warning).
NAMED_FAILED = 5


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


def universe_line(data: DataConfig, read) -> str:
    """One line for a universe: `read` is pipeline.data.universe_loading.UniverseFrame."""
    frame = read.frame
    dates = frame["date"]
    span = f"{_label(dates.min())}..{_label(dates.max())}" if len(frame) else "empty"
    return (f"data={data.name} source={data.source}: {series_count(frame, read.failed)} "
            f"{len(frame)} rows {span}  digest {frame_digest(frame)}  {universe_where(data, read)}")


def series_count(frame, failed: dict[str, str]) -> str:
    """"8 series", or for a fetch that lost codes "4 of 6 series (failed 2: A, B)"."""
    fetched = int(frame["series"].nunique())
    if not failed:
        return f"{fetched} series"
    named = list(failed)[:NAMED_FAILED]
    more = f" and {len(failed) - len(named)} more" if len(failed) > len(named) else ""
    return (f"{fetched} of {fetched + len(failed)} series (failed {len(failed)}: "
            f"{', '.join(named)}{more})")


def universe_where(data: DataConfig, read) -> str:
    if data.source == "universe_stock":
        folder = Path(str(data.cache_dir)).expanduser().resolve()
        mode = "offline, from the cache" if data.offline else "fresh caches kept, others fetched now"
        return f"cache {folder} (one file per code; {mode})"
    if read.path is not None:
        return f"file {read.path} (read locally each run)"
    return "not cached (generated each run)"


def fetch_and_report(cfg: TrainConfig) -> None:
    if cfg.data.layout == "universe":
        from pipeline.data.universe_loading import read_universe  # the universe stack, when used

        print(universe_line(cfg.data, read_universe(cfg.data)), flush=True)
        return
    print(summary_line(cfg.data.name, load_data(cfg.data)), flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    run_command("train", fetch_and_report, argv)


if __name__ == "__main__":
    main()
