"""The small values retraining stages hand each other: plain JSON-able dicts (Airflow XCom)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


class Record:
    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


@dataclass(frozen=True)
class FetchReport(Record):
    source: str
    digest: str
    rows: int
    from_cache: bool
    cache_path: str | None  # the Parquet file; for universe_stock, the folder of per-code files
    notice: str | None
    series: int | None = None  # data.layout=universe: the series in the fetched long frame
    failed: dict[str, str] = field(default_factory=dict)  # universe codes not fetched, with why


@dataclass(frozen=True)
class ChunkReport(Record):
    """One mapped fetch task's outcome for its chunk of universe codes (the bars stay in the
    cache; only counts and reasons travel through XCom)."""

    codes: list[str]
    fetched: int
    failed: dict[str, str] = field(default_factory=dict)  # code -> its one-line reason


@dataclass(frozen=True)
class CandidatesReport(Record):
    digest: str
    windows: dict[str, int]
    variants: list[str]


@dataclass(frozen=True)
class Candidate(Record):
    variant: str
    run_id: str
    run_name: str
    model_name: str
    version: str
    data_digest: str
    test_metrics: dict[str, float] = field(default_factory=dict)
    score: float | None = None  # the promotion metric on the common test windows
    eligible: bool = True  # False: no score, or not better than persistence (retrain.max_mase)
    note: str = ""

    @property
    def mase(self) -> float | None:
        return self.test_metrics.get("test/mase")


@dataclass
class RetrainSummary(Record):
    data: str
    experiment: str
    model_name: str
    tracking_uri: str  # credentials stripped
    metric: str
    direction: str
    data_digest: str
    candidates: list[dict[str, Any]]
    best: str | None  # the variant offered for promotion
    decision: dict[str, Any] | None  # PromotionDecision as a dict; None when nothing was offered
    champion: str | None  # the champion version after this retrain
    finished_at: str = ""
    summary_file: str = ""

    @property
    def promoted(self) -> bool:
        return bool(self.decision and self.decision["promoted"])
