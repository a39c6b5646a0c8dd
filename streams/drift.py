"""Drift monitoring, pure: PSI between feature distributions and River drift detectors.

Two questions a risk analyst asks of a stream of invoices:

- *Has the population moved?* :func:`psi` (population stability index) compares the
  distribution of one feature at two dates, on bins fixed by the reference date's
  quantiles. Usual reading: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 major shift.
- *Has one series changed regime?* :class:`DriftMonitor` feeds a series (e.g. one
  enterprise's monthly sales) to River's ``ADWIN`` or ``PageHinkley`` detector and
  returns a :class:`DriftAlarm` when it fires. Time is an argument (event time), never
  the wall clock, so the backtest and the live worker raise the same alarms.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> ref = rng.normal(0, 1, 2000)
>>> round(psi(ref, rng.normal(0, 1, 2000)), 2) < 0.05
True
>>> psi(ref, rng.normal(1.5, 1, 2000)) > 0.25
True
>>> m = DriftMonitor("sales", detector="page_hinkley", min_instances=5, threshold=5.0)
>>> alarms = [m.update(v, t) for t, v in enumerate([1.0] * 20 + [9.0] * 10)]
>>> [a.t for a in alarms if a is not None][:1]
[20]
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from river import drift as river_drift

DetectorName = Literal["adwin", "page_hinkley"]

#: Floor for an empty bin's share, so PSI stays finite (a common convention).
PSI_EPSILON = 1e-4


def psi(reference: Sequence[float] | np.ndarray, current: Sequence[float] | np.ndarray, n_bins: int = 10) -> float:
    """Population stability index of ``current`` against ``reference``.

    Bins are the reference's quantiles, plus one bin below its minimum and one above its
    maximum (ties collapse bins; NaN values form their own bin, so a feature that becomes undefined for many enterprises shows as drift).
    ``sum((cur - ref) * ln(cur / ref))`` over bins, each share floored at 1e-4.

    Parameters
    ----------
    reference, current : samples of one feature (NaN allowed).
    n_bins : number of quantile bins of the reference.

    Returns
    -------
    float : 0 for identical distributions, NaN if either sample is empty.

    Examples
    --------
    >>> psi([1, 2, 3, 4], [1, 2, 3, 4])
    0.0
    >>> psi([1.0, 2.0, float("nan")], [1.0, float("nan"), float("nan")]) > 0
    True
    """
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    if ref.size == 0 or cur.size == 0:
        return math.nan
    ref_ok, cur_ok = ref[~np.isnan(ref)], cur[~np.isnan(cur)]
    if ref_ok.size:
        # min and max are edges too, so values outside the reference range get their own bins
        edges = np.unique(np.quantile(ref_ok, np.linspace(0.0, 1.0, n_bins + 1)))
    else:
        edges = np.empty(0)

    def shares(ok: np.ndarray, total: int) -> np.ndarray:
        counts = np.bincount(np.searchsorted(edges, ok, side="left"), minlength=edges.size + 1).astype(np.float64)
        counts = np.append(counts, total - ok.size)  # the NaN bin
        return np.maximum(counts / total, PSI_EPSILON)

    p, q = shares(ref_ok, ref.size), shares(cur_ok, cur.size)
    value = float(np.sum((q - p) * np.log(q / p)))
    return 0.0 if abs(value) < 1e-12 else value


def psi_table(reference: np.ndarray, current: np.ndarray, names: Sequence[str], n_bins: int = 10) -> dict[str, float]:
    """PSI of every column: ``reference`` and ``current`` are (n, len(names)) arrays.

    Examples
    --------
    >>> import numpy as np
    >>> psi_table(np.zeros((4, 1)), np.ones((4, 1)), ["x"])["x"] > 1
    True
    """
    if reference.shape[1] != len(names) or current.shape[1] != len(names):
        raise ValueError(f"expected {len(names)} columns, got {reference.shape[1]} and {current.shape[1]}")
    return {name: psi(reference[:, j], current[:, j], n_bins) for j, name in enumerate(names)}


@dataclass(frozen=True, slots=True)
class DriftAlarm:
    """A detector fired on series ``key`` at event time ``t`` (after ``n_seen`` values)."""

    key: Hashable
    detector: DetectorName
    t: Hashable
    value: float
    n_seen: int


@dataclass(slots=True)
class DriftMonitor:
    """One River drift detector over one series; ``update(value, t)`` returns an alarm or None.

    Parameters
    ----------
    key : what the series is (an enterprise id, ``"total_sales"``...), copied into alarms.
    detector : ``"adwin"`` (``river.drift.ADWIN``, adaptive windows, no tuning) or
        ``"page_hinkley"`` (``river.drift.PageHinkley``, a cumulative mean-shift test).
    min_instances, threshold, delta : passed to PageHinkley; monthly series are short
        (about 40 months here), hence the small ``min_instances``.
    adwin_delta : ADWIN's confidence parameter.

    Examples
    --------
    >>> m = DriftMonitor("x", detector="adwin")
    >>> fired = [a for t in range(400) if (a := m.update(0.0 if t < 200 else 5.0, t)) is not None]
    >>> 200 <= fired[0].t < 260
    True
    """

    key: Hashable
    detector: DetectorName = "page_hinkley"
    min_instances: int = 6
    threshold: float = 50.0
    delta: float = 0.005
    adwin_delta: float = 0.002
    n_seen: int = 0
    alarms: list[DriftAlarm] = field(default_factory=list)
    _impl: object = None

    def __post_init__(self) -> None:
        if self.detector == "adwin":
            self._impl = river_drift.ADWIN(delta=self.adwin_delta)  # type: ignore[no-untyped-call]
        elif self.detector == "page_hinkley":
            self._impl = river_drift.PageHinkley(
                min_instances=self.min_instances, delta=self.delta, threshold=self.threshold
            )
        else:
            raise ValueError(f"unknown detector {self.detector!r}: use 'adwin' or 'page_hinkley'")

    def update(self, value: float, t: Hashable) -> DriftAlarm | None:
        """Feed one value observed at event time ``t``; NaN values are skipped."""
        if value != value:  # NaN
            return None
        impl = self._impl
        impl.update(float(value))  # type: ignore[attr-defined]
        self.n_seen += 1
        if impl.drift_detected:  # type: ignore[attr-defined]
            alarm = DriftAlarm(self.key, self.detector, t, float(value), self.n_seen)
            self.alarms.append(alarm)
            return alarm
        return None


def signed_log(x: float) -> float:
    """``sign(x) * log1p(|x|)``: monthly sales in yuan span six orders of magnitude.

    Examples
    --------
    >>> signed_log(0.0), round(signed_log(-9.0), 4)
    (0.0, -2.3026)
    """
    return math.copysign(math.log1p(abs(x)), x)


@dataclass(slots=True)
class ScoreDriftWatch:
    """River watching the live stream of scores: drift in the default probabilities being produced.

    Every rescored enterprise's default probability is fed, in the order the worker produces
    them (event time), to one ADWIN detector over the whole portfolio and one per rating. An
    alarm means the mean default probability of what the stream is scoring has shifted (a
    change in the population, in its invoicing, or in the model's inputs): worth a look and,
    if lasting, a retrain. The worker counts alarms in ``riskmon_drift_alarms_total{signal}``.

    Examples
    --------
    >>> from types import SimpleNamespace as S
    >>> watch = ScoreDriftWatch()
    >>> calm = [S(rating="B", default_probability=0.05, as_of=t) for t in range(300)]
    >>> shock = [S(rating="B", default_probability=0.60, as_of=300 + t) for t in range(300)]
    >>> watch.observe(calm)
    []
    >>> sorted({a.key for a in watch.observe(shock)})
    ['default_probability', 'default_probability:B']
    """

    adwin_delta: float = 0.002
    monitors: dict[str, DriftMonitor] = field(default_factory=dict)

    def _monitor(self, key: str) -> DriftMonitor:
        monitor = self.monitors.get(key)
        if monitor is None:
            monitor = self.monitors[key] = DriftMonitor(key, detector="adwin", adwin_delta=self.adwin_delta)
        return monitor

    def observe(self, scores: Sequence[object]) -> list[DriftAlarm]:
        """Feed a batch of scores (anything with ``rating``, ``default_probability``, ``as_of``)."""
        alarms: list[DriftAlarm] = []
        for score in scores:
            p = float(score.default_probability)  # type: ignore[attr-defined]
            t = score.as_of  # type: ignore[attr-defined]
            for key in ("default_probability", f"default_probability:{score.rating}"):  # type: ignore[attr-defined]
                alarm = self._monitor(key).update(p, t)
                if alarm is not None:
                    alarms.append(alarm)
        return alarms
