"""`make report`: reports/studies.md built from the MLflow runs themselves (nothing recomputed).

    python -m pipeline.report [report.mode=full|quick] [report.output=PATH] [tracking.uri=...]

One table per study (tag `study`): the latest finished run of each variant, its test metrics,
the naive baselines beside them, wall time, parameter count and the study's declared bars
(runner.expect) as pass/fail; plots copied next to the report and linked; the report logged as
an artifact of a summary run. Full mode writes the committed reports/; quick mode reads the
quick store of `make experiments MODE=quick` and writes .reports/quick/ (ignored by git), titled
as quick, so two-epoch numbers never replace the committed ones.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from pipeline.cli import CONF_DIR, group_options, load_config, run_command
from pipeline.config import RunnerConfig, TrainConfig, tracking_store
from pipeline.errors import TrackingError
from pipeline.experiments import QUICK_STORE, STUDY_VARIANT_TAG
from pipeline.tracking.store import Store, open_store

MODEL_METRICS = ("mse", "mae", "rmse", "mape", "accuracy", "log_loss", "exact_match")
BASELINE_METRICS = ("persistence_mae", "mase", "seasonal_naive_mae", "mase_seasonal_naive",
                    "directional_accuracy", "up_share")
# The 80% interval (quantiles 0.1 and 0.9) of probabilistic heads: its test coverage and width,
# the same after split-conformal adjustment on the validation split, and CRPS beside persistence's.
INTERVAL_METRICS = ("coverage_80", "width_80", "conformal_coverage_80", "crps", "persistence_crps")
SUMMARY_EXPERIMENT = "studies-report"


def latest_runs_by_study(client: MlflowClient) -> dict[str, dict[str, Run]]:
    """study -> variant -> the most recent finished run."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, "attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=5000)
    studies: dict[str, dict[str, Run]] = {}
    for run in runs:
        study = run.data.tags.get("study")
        variant = run.data.tags.get(STUDY_VARIANT_TAG) or run.data.tags.get("variant")
        if study and variant:
            studies.setdefault(study, {}).setdefault(variant, run)
    return studies


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def study_runner(study: str) -> RunnerConfig | None:
    """The study's declared runs and bars, or None for a study no longer in conf/experiment/."""
    if study not in configured_studies():
        return None
    return load_config("train", [f"experiment={study}"]).runner


def bar_verdict(runner: RunnerConfig | None, variant: str, metrics: dict[str, float]) -> str:
    bars = [e for e in (runner.expect if runner else []) if e.applies_to(variant)]
    if not bars:
        return ""
    missed = [e.describe() for e in bars if not e.met_by(metrics.get(e.metric))]
    return f"fail ({'; '.join(missed)})" if missed else "pass"


def study_table(runs: dict[str, Run], runner: RunnerConfig | None = None) -> pd.DataFrame:
    rows = []
    for variant, run in sorted(runs.items()):
        metrics = run.data.metrics
        row = {"variant": variant}
        row.update({m: _fmt(metrics.get(f"test/{m}")) for m in MODEL_METRICS + BASELINE_METRICS + INTERVAL_METRICS})
        row["bar"] = bar_verdict(runner, variant, metrics)
        row["beats persistence"] = run.data.tags.get("beats_persistence", "")
        row["wall s"] = f"{(run.info.end_time - run.info.start_time) / 1000:.1f}"
        row["params"] = run.data.tags.get("n_params", "")
        row["run"] = run.info.run_name
        rows.append(row)
    table = pd.DataFrame(rows)
    # Drop metric columns no variant of this study has (e.g. MAPE for sine, accuracy for stock).
    return table.loc[:, [c for c in table.columns if (table[c] != "").any()]]


def markdown(table: pd.DataFrame) -> str:
    header = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "---|" * len(table.columns)
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def copy_plots(client: MlflowClient, study: str, runs: dict[str, Run], out: Path) -> list[str]:
    links = []
    for variant, run in sorted(runs.items()):
        for plot in ("forecast", "loss_curve"):
            target = out / "plots" / study / f"{variant}_{plot}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    local = client.download_artifacts(run.info.run_id, f"plots/{plot}.png", tmp)
                except Exception:  # a run without that plot: leave it out of the links
                    continue
                shutil.copyfile(local, target)
            links.append(f"[{variant} {plot.replace('_', ' ')}](plots/{study}/{target.name})")
    return links


def predictions_list(client: MlflowClient, runs: dict[str, Run]) -> str:
    """Each variant's last-step predictions beside the truth (runner.report_predictions: for
    studies small enough to read them, such as the toy sums)."""
    parts = []
    for variant, run in sorted(runs.items()):
        with tempfile.TemporaryDirectory() as tmp:
            try:
                local = client.download_artifacts(run.info.run_id, "predictions/test_predictions.csv", tmp)
            except Exception:
                continue
            preds = pd.read_csv(local)
        preds = preds[preds["step"] == preds["step"].max()].drop_duplicates("row")
        pairs = ", ".join(f"{t:g} → {p:.2f}" for t, p in zip(preds["y_true"], preds["y_pred"], strict=True))
        parts.append(f"- {variant}: truth → prediction: {pairs}")
    return "\n".join(parts)


def configured_studies() -> list[str]:
    return group_options(CONF_DIR, "experiment")


def build_report(client: MlflowClient, out: Path, mode: str = "full") -> Path:
    studies = latest_runs_by_study(client)
    if not studies:
        raise TrackingError("no finished runs with a `study` tag in this store; run `make experiments` first")
    title = "# Studies" if mode == "full" else "# Studies (quick mode: a few epochs each, not results)"
    lines = [title, "",
             "Built by `make report` from the MLflow runs (latest finished run per study and variant).",
             "Metrics are on the raw scale of the test split; `mase` < 1 beats persistence; `bar` is "
             "the study's declared expectation (runner.expect in conf/experiment/).", ""]
    for study, runs in sorted(studies.items()):
        runner = study_runner(study)
        lines += [f"## {study}", "", markdown(study_table(runs, runner)), ""]
        if runner is not None and runner.report_predictions:
            lines += [predictions_list(client, runs), ""]
        links = copy_plots(client, study, runs, out)
        if links:
            lines += ["Plots: " + " · ".join(links), ""]
    missing = [s for s in configured_studies() if s not in studies]
    if missing:
        lines += ["## Not run in this store", "",
                  *[f"- {s}: no finished runs (see its file in conf/experiment/ for what it needs)"
                    for s in missing], ""]
    out.mkdir(parents=True, exist_ok=True)
    report = out / "studies.md"
    report.write_text("\n".join(lines))
    remove_unlinked_plots(out, "\n".join(lines))
    return report


def remove_unlinked_plots(out: Path, text: str) -> None:
    # A variant renamed or dropped from a study leaves its old plots behind; the report folder
    # holds what the report shows and nothing else.
    for plot in sorted((out / "plots").glob("*/*.png")):
        if f"(plots/{plot.parent.name}/{plot.name})" not in text:
            plot.unlink()


def log_report(store: Store, report: Path) -> str:
    client = store.client
    run = client.create_run(store.experiment(SUMMARY_EXPERIMENT), run_name="studies-report")
    client.log_artifacts(run.info.run_id, str(report.parent), "report")
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def report_output(cfg: TrainConfig) -> Path:
    if cfg.report.output:
        return Path(cfg.report.output)
    return Path("reports") if cfg.report.mode == "full" else Path(QUICK_STORE)


def report_and_log(cfg: TrainConfig, overrides: list[str]) -> None:
    if cfg.report.mode == "quick" and not any(o.startswith("tracking.uri=") for o in overrides):
        store = open_store(f"sqlite:///{QUICK_STORE}/mlflow.db", f"{QUICK_STORE}/mlartifacts")
    else:
        store = tracking_store(cfg.tracking)
    store.check()
    out = report_output(cfg)
    report = build_report(store.client, out, cfg.report.mode)
    run_id = log_report(store, report)
    print(f"report: {report} (logged to run {run_id} in experiment '{SUMMARY_EXPERIMENT}')", flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    run_command("report", report_and_log, argv, with_overrides=True)


if __name__ == "__main__":
    main()
