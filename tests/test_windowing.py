import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.cli import load_config
from pipeline.data.windowing import WindowSpec, check_split_lengths, make_windows, split_bounds
from pipeline.errors import ConfigError, DataError

specs = st.builds(WindowSpec, lookback=st.integers(1, 12), horizon=st.integers(1, 5),
                  stride=st.integers(1, 4), mode=st.sampled_from(["sequence", "forecast"]))


@settings(max_examples=200, deadline=None)
@given(spec=specs, n=st.integers(0, 80), first=st.integers(0, 1000))
def test_windows_shapes_and_alignment(spec: WindowSpec, n: int, first: int) -> None:
    rows = np.arange(first, first + n, dtype=float)
    x = np.stack([rows, -rows], axis=1)  # each value names its own row
    y = (rows * 10)[:, None]
    w = make_windows(x, y, spec, first_row=first)
    expected = 0 if n < spec.span else (n - spec.span) // spec.stride + 1
    assert w.x.shape == (expected, spec.lookback, 2)
    assert w.y.shape == (expected, spec.target_steps, 1)
    if expected == 0:
        return
    starts = first + spec.stride * np.arange(expected)
    np.testing.assert_array_equal(w.x[:, 0, 0], starts)
    # inputs are consecutive rows
    np.testing.assert_array_equal(np.diff(w.x[:, :, 0], axis=1), 1)
    # targets sit at the rows `rows` says, and are the y of those rows
    np.testing.assert_array_equal(w.y[..., 0], w.rows * 10)
    if spec.mode == "forecast":
        # the first target is the row right after the last input: no overlap, no gap
        np.testing.assert_array_equal(w.rows[:, 0], w.x[:, -1, 0] + 1)
    else:
        np.testing.assert_array_equal(w.rows, w.x[..., 0])
    # never past the end of the segment
    assert w.rows.max() <= first + n - 1


@settings(max_examples=100, deadline=None)
@given(n=st.integers(30, 500), train=st.floats(0.3, 0.8), spec=specs)
def test_no_window_crosses_a_split_boundary(n: int, train: float, spec: WindowSpec) -> None:
    val = (1 - train) / 2
    bounds = split_bounds(n, {"train": train, "val": val, "test": 1 - train - val})
    assert bounds["train"][0] == 0 and bounds["test"][1] == n
    assert bounds["train"][1] == bounds["val"][0] and bounds["val"][1] == bounds["test"][0]
    x = np.arange(n, dtype=float)[:, None]
    for start, stop in bounds.values():
        w = make_windows(x[start:stop], x[start:stop], spec, first_row=start)
        if len(w):
            assert w.x.min() >= start and w.x.max() < stop
            assert w.rows.min() >= start and w.rows.max() < stop


def test_split_fractions_must_add_up() -> None:
    # The schema refuses them before any data is read (split_bounds trusts it).
    with pytest.raises(ConfigError, match=r"^data.split=.*: fractions must add up to 1 \(they add up to 0.9\)$"):
        load_config("train", ["data.split.train=0.5", "data.split.val=0.2", "data.split.test=0.2"])


def test_too_short_split_names_the_split_and_sizes() -> None:
    spec = WindowSpec(lookback=30, horizon=5, mode="forecast")
    bounds = split_bounds(100, {"train": 0.8, "val": 0.1, "test": 0.1})
    with pytest.raises(DataError, match=r"sine: the val split has 10 rows but one sample needs 35"):
        check_split_lengths(bounds, spec, "sine")


@pytest.mark.parametrize("field,value,expected", [
    ("lookback", 0, "data.lookback=0: must be >= 1"),
    ("horizon", -1, "data.horizon=-1: must be >= 1"),
    ("stride", 1.5, "data.stride: '1.5' is not an integer"),
])
def test_window_settings_are_checked_by_the_schema(field: str, value, expected: str) -> None:
    # WindowSpec trusts its values: the config they come from is checked once, at load_config.
    with pytest.raises(ConfigError) as info:
        load_config("train", ["data=sst", f"data.{field}={value}"])
    assert str(info.value) == expected
