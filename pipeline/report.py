"""`make report`: reports/studies.md built from the MLflow runs themselves (nothing recomputed).

One table per study (tag `study`): the latest finished run of each variant, its test metrics,
the naive baselines beside them, wall time and parameter count; plots copied next to the report
and linked; the report logged as an artifact of a summary run.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from pipeline.cli import CONF_DIR, fail, group_options, quiet_mlflow

MODEL_METRICS = ("mse", "mae", "rmse", "mape", "accuracy", "exact_match")
BASELINE_METRICS = ("persistence_mae", "mase", "seasonal_naive_mae", "mase_seasonal_naive")
SUMMARY_EXPERIMENT = "studies-report"


def latest_runs_by_study(client: MlflowClient) -> dict[str, dict[str, Run]]:
    """study -> variant -> the most recent finished run."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, "attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=5000)
    studies: dict[str, dict[str, Run]] = {}
    for run in runs:
        study, variant = run.data.tags.get("study"), run.data.tags.get("variant")
        if study and variant:
            studies.setdefault(study, {}).setdefault(variant, run)
    return studies


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def study_table(runs: dict[str, Run]) -> pd.DataFrame:
    rows = []
    for variant, run in sorted(runs.items()):
        metrics = run.data.metrics
        row = {"variant": variant}
        row.update({m: _fmt(metrics.get(f"test/{m}")) for m in MODEL_METRICS + BASELINE_METRICS})
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


def toy_predictions(client: MlflowClient, runs: dict[str, Run]) -> str:
    """The toy study reports predictions beside the true sums, per variant."""
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
        parts.append(f"- {variant}: true sum → prediction: {pairs}")
    return "\n".join(parts)


def configured_studies() -> list[str]:
    return group_options(CONF_DIR, "experiment")


def build_report(client: MlflowClient, out: Path) -> Path:
    studies = latest_runs_by_study(client)
    if not studies:
        fail("no finished runs with a `study` tag in this store; run `make experiments` first")
    lines = ["# Studies", "",
             "Built by `make report` from the MLflow runs (latest finished run per study and variant).",
             "Metrics are on the raw scale of the test split; `mase` < 1 beats persistence.", ""]
    for study, runs in sorted(studies.items()):
        lines += [f"## {study}", "", markdown(study_table(runs)), ""]
        if study.startswith("toy"):
            lines += [toy_predictions(client, runs), ""]
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
    return report


def log_report(client: MlflowClient, report: Path) -> str:
    experiment = client.get_experiment_by_name(SUMMARY_EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(SUMMARY_EXPERIMENT)
    run = client.create_run(experiment_id, run_name="studies-report")
    client.log_artifacts(run.info.run_id, str(report.parent), "report")
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI or sqlite:///mlflow.db")
    parser.add_argument("--out", default="reports")
    args = parser.parse_args(argv)
    quiet_mlflow()
    uri = args.tracking_uri or mlflow.get_tracking_uri()
    if uri.startswith("file:") or uri == "":
        uri = "sqlite:///mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    report = build_report(client, Path(args.out))
    run_id = log_report(client, report)
    print(f"report: {report} (logged to run {run_id} in experiment '{SUMMARY_EXPERIMENT}')")


if __name__ == "__main__":
    sys.exit(main())
