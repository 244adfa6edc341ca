"""Real monthly sea surface temperatures: NOAA ERSST v3b, Niño 1+2 region, 1950-2010.

The data ships inside statsmodels (statsmodels.datasets.elnino), so it works offline.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from pipeline.data.sources import source

MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")


def wide_to_monthly(table: pd.DataFrame, column: str) -> pd.DataFrame:
    """A YEAR x JAN..DEC table -> one row per month with a `date` (first of the month)."""
    long = table.melt(id_vars="YEAR", value_vars=list(MONTHS), var_name="month", value_name=column)
    long["date"] = pd.to_datetime({"year": long["YEAR"].astype(int),
                                   "month": long["month"].map(MONTHS.index) + 1, "day": 1})
    return long[["date", column]].sort_values("date", ignore_index=True)


@source("sst", cached=True)
def elnino_sst(params: Mapping[str, Any]) -> pd.DataFrame:
    from statsmodels.datasets import elnino

    return wide_to_monthly(elnino.load_pandas().data, params["column"])
