"""What a daily-bar source is asked for: one code over a date range. Every stock source (tushare's
pro and legacy APIs, baostock) reads this one request, so none depends on another for it."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class BarRequest:
    code: str  # six digits, e.g. 000001
    ts_code: str  # the pro API's code, e.g. 000001.SH
    index: bool
    start: pd.Timestamp
    end: pd.Timestamp

    @property
    def api_name(self) -> str:
        return "index_daily" if self.index else "daily"

    def describe(self) -> str:
        return f"{self.ts_code} {self.start:%Y-%m-%d}..{self.end:%Y-%m-%d}"
