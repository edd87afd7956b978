"""Downsampling keeps what a person looks for: spikes, dips, and every NaN/inf step."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from babysit.monitor.dashboard.downsample import SeriesBuffer, ema, minmax_downsample, nonfinite_runs


def _series(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return np.arange(1, n + 1, dtype=float), 2.0 + 0.1 * rng.standard_normal(n)


def test_a_single_spike_and_dip_survive_a_long_series():
    x, y = _series(200_000)
    y[123_457] = 50.0
    y[7] = -9.0
    d = minmax_downsample(x, y, 2000)
    assert len(d.x) <= 2000 + 3
    assert d.y.max() == 50.0 and d.x[d.y.argmax()] == 123_458
    assert d.y.min() == -9.0 and d.x[d.y.argmin()] == 8
    assert d.width > 1 and d.n == 200_000


def test_short_series_are_not_touched():
    x, y = _series(500)
    d = minmax_downsample(x, y, 2000)
    assert d.width == 1
    np.testing.assert_array_equal(d.x, x)
    np.testing.assert_array_equal(d.y, y)
    np.testing.assert_allclose(d.mean_y, y)


def test_every_nonfinite_run_is_reported_with_its_kind_and_extent():
    x, y = _series(100_000)
    y[50_000:50_010] = np.nan
    y[70_000] = np.inf
    y[70_001] = -np.inf
    y[99_999] = np.nan
    d = minmax_downsample(x, y, 200)
    nf = d.nonfinite
    assert nf[["start", "end"]].to_numpy().tolist() == [[50_001, 50_010], [70_001, 70_001], [70_002, 70_002],
                                                        [100_000, 100_000]]
    assert nf["kind"].tolist() == ["NaN", "+inf", "-inf", "NaN"]
    assert nf["count"].tolist() == [10, 1, 1, 1]
    assert np.isfinite(d.y).all()  # the envelope itself holds finite values only


def test_a_nan_stretch_continues_across_appends():
    buf = SeriesBuffer(100)
    buf.extend([1, 2, 3], [1.0, np.nan, np.nan])
    buf.extend([4, 5], [np.nan, 2.0])
    nf = buf.view().nonfinite
    assert nf[["start", "end", "count"]].to_numpy().tolist() == [[2, 4, 3]]


def test_nonfinite_runs_offsets_rows():
    assert nonfinite_runs(np.array([0.0, np.nan, np.nan, 1.0, np.inf]), offset=10) == [[11, 12, 1], [14, 14, 2]]
    assert nonfinite_runs(np.array([1.0, 2.0])) == []


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.one_of(st.floats(-1e6, 1e6), st.just(float("nan")), st.just(float("inf"))),
                    min_size=1, max_size=400),
    cuts=st.lists(st.integers(1, 60), max_size=30),
    max_points=st.integers(2, 40),
)
def test_appending_in_pieces_equals_downsampling_at_once(values, cuts, max_points):
    y = np.array(values)
    x = np.arange(len(y), dtype=float)
    whole = minmax_downsample(x, y, max_points)
    buf, i = SeriesBuffer(max_points), 0
    for c in cuts:
        buf.extend(x[i : i + c], y[i : i + c])
        i += c
    buf.extend(x[i:], y[i:])
    part = buf.view()
    np.testing.assert_array_equal(part.x, whole.x)
    np.testing.assert_array_equal(part.y, whole.y)
    np.testing.assert_allclose(part.mean_y, whole.mean_y, equal_nan=True)
    assert part.nonfinite.equals(whole.nonfinite)
    assert len(part.x) <= max_points + 3
    finite = y[np.isfinite(y)]
    if len(finite):  # the global extremes are always kept
        assert part.y.max() == finite.max() and part.y.min() == finite.min()


def test_a_zoom_window_returns_full_detail_around_a_step():
    x, y = _series(100_000)
    buf = SeriesBuffer(1000).extend(x, y)
    w = buf.window(40_000, 40_100)
    np.testing.assert_array_equal(w.x, np.arange(40_000, 40_101))
    np.testing.assert_array_equal(w.y, y[39_999:40_100])


def test_refresh_work_is_bounded_by_the_summary_not_the_run():
    x, y = _series(300_000)
    buf = SeriesBuffer(2000).extend(x, y)
    assert buf._nb <= buf.max_buckets  # bounded state, whatever the run's length
    before = buf._nb
    buf.extend(np.arange(300_001, 300_101), np.ones(100))
    assert buf._nb - before <= 1  # 100 new steps add at most one bucket
    assert buf.view().x[-1] == 300_100  # the line reaches the newest step


def test_ema_matches_tensorboard_and_skips_nan():
    out = ema([1.0, 2.0, 3.0], 0.5)
    # debiased like TensorBoard: acc_t = w * acc_{t-1} + (1 - w) * v_t, divided by 1 - w^t
    np.testing.assert_allclose(out, [1.0, (0.25 * 1 + 0.5 * 2) / 0.75, (0.125 * 1 + 0.25 * 2 + 0.5 * 3) / 0.875])
    out = ema([1.0, np.nan, 1.0], 0.9)
    assert np.isnan(out[1]) and out[0] == 1.0 and out[2] == 1.0
