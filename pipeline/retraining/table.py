"""The outcome of a retrain as the console table `make retrain` and the DAG's last task print."""

from __future__ import annotations

from typing import Any

from pipeline.retraining.records import RetrainSummary


def decision_text(candidate: dict[str, Any], summary: RetrainSummary) -> str:
    if candidate["variant"] == summary.best and summary.decision is not None:
        verdict = "promoted to @champion" if summary.promoted else "not promoted"
        return f"{verdict}: {summary.decision['reason']}"
    if not candidate["eligible"]:
        return f"not eligible: {candidate['note']}"
    return f"not the best candidate on the same windows (best: {summary.best})"


def summary_table(summary: RetrainSummary) -> str:
    header = ("variant", "run id", "version", summary.metric, "mase", "decision")
    rows = [header]
    for c in summary.candidates:
        rows.append((c["variant"], c["run_id"], c["version"], _number(c["score"]),
                     _number(c["test_metrics"].get("test/mase")), decision_text(c, summary)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
             for row in rows]
    champion = f"v{summary.champion}" if summary.champion else "none"
    lines.append(f"{summary.model_name} @champion: {champion}   store: {summary.tracking_uri}")
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"
