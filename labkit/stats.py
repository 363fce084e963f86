"""Statistics over seeds: means with Student-t intervals, differences (paired by seed, or
Welch's), verdicts.

"±" is the sample SD over seeds. Intervals are Student-t 95% intervals of a mean, cut to the
range the measure can take, or of a difference of two means: paired t over the seeds both
sides share, or Welch's (with 3-5 seeds a bootstrap has too few distinct resamples to be honest).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import scipy.stats

LEVEL = 0.95
NAN = math.nan


@dataclass(frozen=True)
class Estimate:
    """Mean of n runs, sample SD, and the Student-t CI of the mean (nan when n < 2)."""

    n: int
    mean: float
    sd: float
    lo: float
    hi: float

    def fmt(self, scale: float = 1.0, digits: int = 2, show_n: bool = True) -> str:
        """ "mean ± SD (n=k)"; with show_n=False "mean ± SD" (for tables with an n column)."""
        if self.n == 0:
            return "no runs"
        m = f"{self.mean * scale:.{digits}f}"
        if self.n < 2:
            return f"{m} (n=1)" if show_n else m
        return f"{m} ± {self.sd * scale:.{digits}f}" + (f" SD (n={self.n})" if show_n else "")

    def fmt_ci(self, scale: float = 1.0, digits: int = 2) -> str:
        return "—" if self.n < 2 else f"[{self.lo * scale:.{digits}f}, {self.hi * scale:.{digits}f}]"


def clean_values(values: Iterable) -> list[float]:
    """The measured values as floats; None and NaN (a run without that number) left out."""
    out = []
    for v in values:
        if isinstance(v, (bool, str, bytes)):
            raise TypeError(f"a measured value must be a number, got {v!r}")
        if v is not None and not math.isnan(v):
            out.append(float(v))
    return out


def estimate(values: Iterable, bounds: tuple[float, float] | None = None) -> Estimate:
    """Mean, SD and t interval of `values`; with `bounds` (the range the measure can take, e.g.
    (0, 1) for an accuracy) the interval is cut to that range, which still holds the true mean."""
    v = clean_values(values)
    n = len(v)
    if bounds is not None:
        if not bounds[0] < bounds[1]:
            raise ValueError(f"bounds must be (low, high) with low < high, got {bounds}")
        if v and not bounds[0] <= min(v) <= max(v) <= bounds[1]:
            raise ValueError(f"values {v} lie outside their bounds {bounds}")
    if n == 0:
        return Estimate(0, NAN, NAN, NAN, NAN)
    mean = sum(v) / n
    if n < 2:
        return Estimate(1, mean, NAN, NAN, NAN)
    if max(v) == min(v):  # exactly 0, not the rounding residue of a mean of equal values
        return Estimate(n, mean, 0.0, mean, mean)
    sd = math.sqrt(sum((x - mean) ** 2 for x in v) / (n - 1))
    lo, hi = scipy.stats.t.interval(LEVEL, n - 1, loc=mean, scale=sd / math.sqrt(n))
    if bounds is not None:
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    return Estimate(n, mean, sd, float(lo), float(hi))


def bounds_of(field: str) -> tuple[float, float] | None:
    """The range a run's summary field can take: accuracies [0, 1], losses [0, inf)."""
    if field.endswith("_acc"):
        return (0.0, 1.0)
    return (0.0, math.inf) if "loss" in field else None


@dataclass(frozen=True)
class Difference:
    """mean(a) - mean(b) with a 95% CI (nan when either side has fewer than 2 runs); paired: na = nb = pairs."""

    diff: float
    lo: float
    hi: float
    df: float
    na: int
    nb: int
    paired: bool = False  # by seed (stats.paired): na = nb = pairs

    @property
    def has_ci(self) -> bool:
        return not math.isnan(self.lo)

    def fmt(self, scale: float = 100.0, digits: int = 2, unit: str = " pts") -> str:
        """ "+d [lo, hi]" with unit: accuracies in points by default; scale=1, unit="" for others."""
        if math.isnan(self.diff):
            return "—"
        s = f"{self.diff * scale:+.{digits}f}{unit}"
        if self.has_ci:
            s += f" [{self.lo * scale:+.{digits}f}, {self.hi * scale:+.{digits}f}]"
        return s


def welch(a: Iterable, b: Iterable) -> Difference:
    """mean(a) - mean(b) with its 95% Welch interval; None/NaN values left out."""
    a, b = clean_values(a), clean_values(b)
    na, nb = len(a), len(b)
    if na == 0 or nb == 0:
        return Difference(NAN, NAN, NAN, NAN, na, nb)
    ea, eb = estimate(a), estimate(b)
    diff = ea.mean - eb.mean
    if na < 2 or nb < 2 or ea.sd == eb.sd == 0:  # no spread measured: no interval
        return Difference(diff, NAN, NAN, NAN, na, nb)
    with warnings.catch_warnings():  # one side's equal values: scipy warns of their zero variance
        warnings.simplefilter("ignore", RuntimeWarning)
        t = scipy.stats.ttest_ind(a, b, equal_var=False)
        ci = t.confidence_interval(LEVEL)
    return Difference(diff, float(ci.low), float(ci.high), float(t.df), na, nb)


def paired(a: dict, b: dict) -> Difference:
    """Over the seeds both {seed: value} share: mean(a - b) with its 95% paired t interval. Runs
    of one seed start from the same weights and see the same data order, so their difference
    holds less of the seed's luck than two independent means do."""
    seeds = sorted(s for s in a.keys() & b.keys() if clean_values([a[s]]) and clean_values([b[s]]))
    x, y = [float(a[s]) for s in seeds], [float(b[s]) for s in seeds]
    n = len(seeds)
    if n == 0:
        return Difference(NAN, NAN, NAN, NAN, 0, 0, paired=True)
    diff = sum(x) / n - sum(y) / n
    d = [u - v for u, v in zip(x, y, strict=True)]
    # Equal differences of rounded accuracies differ in their last bits: no spread either.
    if n < 2 or max(d) - min(d) <= 1e-12:
        return Difference(diff, NAN, NAN, NAN, n, n, paired=True)
    t = scipy.stats.ttest_rel(x, y)
    ci = t.confidence_interval(LEVEL)
    return Difference(diff, float(ci.low), float(ci.high), float(t.df), n, n, paired=True)


def judge(d: Difference, claimed: float | None = None, scale: float = 100.0) -> str:
    """Verdict on a claim "a beats b" (d = a - b), with the claimed size if any."""
    if math.isnan(d.diff):
        return "untested: runs missing"
    if not d.has_ci:
        if min(d.na, d.nb) < 2:
            side = "each side" if d.na == d.nb else "one side"
            return f"not testable: {min(d.na, d.nb)} run on {side}, no spread measured (needs seeds ≥ 2)"
        if d.paired:
            return "not testable: every seed gave the same difference, no spread measured"
        return "not testable: every run on each side gave the same value, no spread measured"
    size = ""
    if claimed is not None:
        inside = d.lo <= claimed <= d.hi
        size = f"; the original's {claimed * scale:.1f}-point size is {'inside' if inside else 'outside'} the CI"
    if d.lo > 0:
        return f"confirmed: the CI lies above 0{size}"
    if d.hi < 0:
        return f"refuted: the opposite holds (CI below 0){size}"
    return f"not shown: the CI includes 0, no difference shown with these runs{size}"
