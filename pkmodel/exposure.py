"""Exposure metrics per regimen: Cmax, Ctrough, AUC per cycle and per week, Cavg, time above a threshold,
dose intensity.

A *cycle* is the repeating unit of a regimen: 21 days for Q3W, 28 days (three doses) for D1,8,15 q4w.
Cycle ``k`` covers ``[s_k, s_k + τ)``; its metrics are

=============  =====================================================================================
Cmax           largest concentration in the cycle
Ctrough        concentration just before the next cycle's first dose, ``C(s_k + τ⁻)``
AUC            ``∫ C dt`` over the cycle (conc·h)
AUC_week       ``AUC · 168/τ`` (conc·h per week)
Cavg           ``AUC/τ``
time_above_X   hours of the cycle with ``C > X`` (thresholds per analyte, e.g. free SN-38)
=============  =====================================================================================

Cycle labels (column ``cycle``, text): ``"1"``, ``"2"``, ... for the regimen's cycles, ``"ss"`` for
steady state (the cycle repeated for ever), ``"all"`` for the whole treatment ``[0, until]``, where
AUC, AUC_week and Cavg ``= AUC/until`` are reported (``until``: end of the last cycle, or a time per
subject, e.g. the time of an event).  Dose intensity (analyte ``"dose"``, cycle ``"all"``) is the total
dose divided by the treatment duration ``n·τ``, in dose unit per week (mg/kg/week for mg/kg doses).

Two routes give the same table:

* :func:`exposure_metrics` — from the model, for linear models, without an ODE: the state is
  augmented with one integrator per analyte (``d AUC/dt = c·x + d`` for an output ``c·x + d``) and with
  the infusion rates, so that every interval is one matrix exponential and every dose a jump.  AUC and
  Ctrough are exact; steady state is the exact fixed point of the one-cycle map
  ``x_ss = (I − e^{Kτ})⁻¹ m``.  Cmax and time above a threshold use a grid (0.1 h for 2 h after every
  dose, 0.25 h to 12 h, 0.5 h to 24 h, then 2 h; event times included) of exact values *and exact slopes*
  (``dC/dt = c·(K·x + inputs)``): between grid points the concentration is the cubic Hermite interpolant
  of those (error O(h⁴)), whose interior maxima refine Cmax and whose threshold crossings are found by
  bisection.
* :func:`exposure_from_result` — from a :class:`~pkmodel.SimulationResult` on a dense grid (any
  model, e.g. the ODE engine): AUC by the linear-up/log-down trapezoidal rule, Cmax the largest
  sample, Ctrough the sample at the next cycle start, crossings interpolated as above.
  :func:`exposure_times` gives a suitable grid.

Output is a tidy :class:`pandas.DataFrame` with columns ID, analyte, cycle, metric, value, unit.

Examples
--------
>>> from pkmodel import load_model, parse_regimen
>>> m = load_model("one_compartment_iv")  # CL 1 L/h, V 10 L: k = 0.1/h
>>> table = exposure_metrics(m, parse_regimen("100 mg q24h x3"), cycles=[1, "ss"])
>>> auc = table.query("metric == 'AUC'").set_index("cycle")["value"]
>>> round(float(auc["1"]), 6), round(float(auc["ss"]), 6)  # 100·(1 − e^{−2.4}); dose/CL at steady state
(90.928205, 100.0)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.linalg
import sympy

from .dosing import Bolus, Infusion, Regimen
from .errors import DosingError, SimulationError
from .model import Model
from .simulation import SimulationResult

__all__ = [
    "METRIC_COLUMNS",
    "Cycles",
    "exposure_from_result",
    "exposure_metrics",
    "exposure_times",
    "linear_outputs",
    "regimen_cycles",
]

#: Columns of every exposure table.
METRIC_COLUMNS = ("ID", "analyte", "cycle", "metric", "value", "unit")
HOURS_PER_WEEK = 168.0
#: Grid of the exact route, after each dose: (until h after the dose, step h); then the last step.
_GRID = ((2.0, 0.1), (12.0, 0.25), (24.0, 0.5))
_COARSE_STEP = 2.0
_TOL = 1e-9  # h, to match times
_CACHE_BYTES = 64 * 2**20  # propagators e^{AΔ} kept per call (the common grid steps fit easily)


# --------------------------------------------------------------------------------------------- cycles


@dataclass(frozen=True)
class Cycles:
    """The cycle structure of a regimen (see :func:`regimen_cycles`).

    Attributes
    ----------
    starts : tuple of float
        Start of every cycle, h.
    length : float
        Cycle length τ, h.
    periodic : bool
        Every cycle has the same doses at the same offsets (needed for steady state).
    total_dose : float
        Sum of all administrations, in ``unit``.
    unit : str
        Dose unit of every administration.
    """

    starts: tuple[float, ...]
    length: float
    periodic: bool
    total_dose: float
    unit: str

    @property
    def n(self) -> int:
        """Number of cycles."""
        return len(self.starts)

    @property
    def end(self) -> float:
        """End of the last cycle, h."""
        return self.starts[-1] + self.length

    @property
    def dose_intensity(self) -> float:
        """Total dose / treatment duration (``n·τ``), in ``unit`` per week."""
        return self.total_dose / (self.n * self.length) * HOURS_PER_WEEK

    @property
    def intensity_unit(self) -> str:
        """Unit of :attr:`dose_intensity`, e.g. ``"mg/kg/week"``."""
        return f"{self.unit}/week"


def regimen_cycles(regimen: Regimen, cycle_length: float | None = None) -> Cycles:
    """The cycles of a regimen: their starts, length, and the dose intensity.

    Without ``cycle_length`` the cycle is the common interdose interval ``ii`` of the regimen's
    records when they all repeat with the same ``ii`` and ``addl`` (as :func:`~pkmodel.q3w`,
    :func:`~pkmodel.d1_8_15_q4w` and ``parse_regimen("... qN ... xM")`` build them).  Otherwise give
    ``cycle_length``: cycles then start at the first dose and every ``cycle_length`` h up to the last dose.

    Parameters
    ----------
    regimen : Regimen
    cycle_length : float, optional
        Cycle length τ, h.

    Returns
    -------
    Cycles

    Raises
    ------
    DosingError
        Empty regimen, steady-state records, mixed dose units, or a cycle that cannot be inferred.

    Examples
    --------
    >>> from pkmodel import q3w, d1_8_15_q4w
    >>> c = regimen_cycles(d1_8_15_q4w(12, cycles=4))
    >>> c.starts, c.length, c.dose_intensity, c.intensity_unit
    ((0.0, 672.0, 1344.0, 2016.0), 672.0, 9.0, 'mg/kg/week')
    >>> round(regimen_cycles(q3w(16, cycles=6)).dose_intensity, 4)
    5.3333
    """
    if not isinstance(regimen, Regimen):
        raise DosingError(
            f"expected a Regimen, got {type(regimen).__name__}; build one with q3w(), parse_regimen() ..."
        )
    if len(regimen) == 0:
        raise DosingError("the regimen has no doses: exposure metrics need at least one administration")
    if any(e.ss for e in regimen):
        raise DosingError(
            "the regimen has steady-state (SS) records: exposure metrics take plain repeated doses; remove SS "
            "and ask for cycle 'ss' to get steady state"
        )
    units = sorted({e.unit for e in regimen})
    if len(units) > 1:
        raise DosingError(
            f"the regimen mixes dose units {units}: dose intensity needs one unit; give every dose in mg/kg or in mg"
        )
    events = regimen.expand()
    first = min(e.time for e in events)
    last = max(e.time for e in events)
    if cycle_length is None:
        iis = {e.ii for e in regimen}
        addls = {e.addl for e in regimen}
        span = max(e.time for e in regimen) - min(e.time for e in regimen)
        if len(iis) == 1 and len(addls) == 1 and next(iter(iis)) > 0 and span < next(iter(iis)):
            tau = float(next(iter(iis)))
        elif len(events) == 1:
            raise DosingError(
                "a single dose has no cycle: pass cycle_length= (h), the interval over which to report "
                "exposure, e.g. cycle_length=504 for 21 days"
            )
        else:
            raise DosingError(
                "cannot infer the cycle of this regimen (its records do not repeat with one common ii and addl): "
                "pass cycle_length= (h), e.g. 504 for Q3W or 672 for D1,8,15 q4w"
            )
    else:
        try:
            tau = float(cycle_length)
        except (TypeError, ValueError):
            raise DosingError(f"cycle_length={cycle_length!r} must be a number of hours") from None
        if not (math.isfinite(tau) and tau > 0):
            raise DosingError(f"cycle_length={cycle_length!r} must be a positive, finite number of hours")
    n = math.floor((last - first) / tau + 1e-9) + 1
    starts = tuple(first + k * tau for k in range(n))
    for e in events:
        if isinstance(e, Infusion) and e.time + e.duration_h > first + n * tau + _TOL:
            raise DosingError(
                f"the infusion starting at {e.time:g} h ends after the last cycle ({first + n * tau:g} h); "
                "lengthen cycle_length or shorten the infusion"
            )
    per_cycle: list[list[tuple]] = [[] for _ in range(n)]
    for e in events:
        k = min(math.floor((e.time - first) / tau + 1e-9), n - 1)
        duration = e.duration_h if isinstance(e, Infusion) else 0.0
        per_cycle[k].append((round(e.time - starts[k], 9), e.amount, duration, e.compartment))
    periodic = all(sorted(c) == sorted(per_cycle[0]) for c in per_cycle)
    return Cycles(starts, tau, periodic, float(sum(e.amount for e in events)), units[0])


def _cycle_labels(cycles: Sequence[Any], structure: Cycles, allow_ss: bool) -> list[Any]:
    """Normalise requested cycles to ints and "ss" (deduplicated, in order)."""
    if isinstance(cycles, (str, int)):
        cycles = [cycles]
    out: list[Any] = []
    for c in cycles:
        if c == "last":
            c = structure.n
        if c == "ss":
            if not allow_ss:
                raise SimulationError(
                    "cycle 'ss' (steady state) needs the exact route: use exposure_metrics(model, regimen, ...) "
                    "for a linear model, or ask a simulation for cycle 'last'"
                )
            if not structure.periodic:
                raise SimulationError(
                    "cycle 'ss' needs every cycle to repeat the same doses, but this regimen's cycles differ; "
                    "ask for a cycle number instead"
                )
        elif isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 1 <= int(c) <= structure.n:
            raise SimulationError(
                f"cycle {c!r} is not a cycle of this regimen: give 1..{structure.n}, 'last' or 'ss'"
            )
        else:
            c = int(c)
        if c not in out:
            out.append(c)
    return out


# ------------------------------------------------------------------------------------------ outputs


def linear_outputs(model: Model) -> tuple[str, ...]:
    """Outputs that are affine in the amounts (``c·x + d``), whose AUC the exact route integrates.

    Examples
    --------
    >>> from pkmodel import load_model
    >>> linear_outputs(load_model("adc_esg401"))
    ('TAb', 'ADC', 'acSN38', 'SN38', 'SN38G')
    """
    states = [model.symbols[s] for s in model.state_names]
    from .expressions import TIME_SYMBOL

    names = []
    for name in model.outputs:
        expr = model.output_exprs[name]
        if TIME_SYMBOL in expr.free_symbols:
            continue
        try:
            if sympy.Poly(expr, *states).total_degree() <= 1:
                names.append(name)
        except sympy.PolynomialError:
            continue
    return tuple(names)


def _analytes(requested, available: Sequence[str], all_outputs: Sequence[str], model_name: str) -> list[str]:
    if requested is None:
        return list(available)
    names = [requested] if isinstance(requested, str) else list(requested)
    for name in names:
        if name not in all_outputs:
            raise SimulationError(
                f"analyte {name!r} is not an output of {model_name}; outputs: {', '.join(all_outputs)}"
            )
        if name not in available:
            raise SimulationError(
                f"output {name!r} of {model_name} is not linear in the amounts (e.g. a ratio), so the exact route "
                "cannot integrate it; simulate a dense grid (exposure_times) and use exposure_from_result"
            )
    return names


def _thresholds(threshold, analytes: Sequence[str]) -> dict[str, list[float]]:
    if threshold is None:
        return {}
    if not isinstance(threshold, Mapping):
        raise SimulationError(
            f"threshold must be a mapping analyte -> value(s), e.g. {{'SN38': 5.0}}, got {threshold!r}"
        )
    out = {}
    for name, values in threshold.items():
        if name not in analytes:
            raise SimulationError(
                f"threshold for {name!r}, which is not among the analytes {', '.join(analytes)}; add it to "
                "analytes or remove the threshold"
            )
        vals = [values] if np.isscalar(values) else list(values)
        for v in vals:
            if not (isinstance(v, (int, float, np.floating, np.integer)) and math.isfinite(v) and v >= 0):
                raise SimulationError(f"threshold {v!r} for {name} must be a finite number >= 0 (its unit)")
        out[name] = [float(v) for v in vals]
    return out


# ------------------------------------------------------------------------------------- grid helpers


def _dose_grid(start: float, end: float, dose_times: Sequence[float], events: Sequence[float]) -> np.ndarray:
    """Grid on [start, end]: fine after each dose, coarse elsewhere, every event time included."""
    pieces = [np.array([start, end]), np.asarray(events, dtype=float)]
    for d in dose_times:
        t0 = d
        for until, step in _GRID:
            pieces.append(d + np.arange(t0 - d, until + 1e-12, step))
            t0 = d + until
        pieces.append(np.arange(t0, end + 1e-12, _COARSE_STEP))
    pieces.append(np.arange(start, end + 1e-12, _COARSE_STEP))
    grid = np.concatenate(pieces)
    grid = grid[(grid >= start - _TOL) & (grid <= end + _TOL)]
    grid = np.unique(np.round(grid, 9))
    return grid


def exposure_times(
    regimen: Regimen, *, cycle_length: float | None = None, until: float | None = None
) -> np.ndarray:
    """A dense time grid (h) for simulating exposure: every cycle boundary and dose event, 0.1-h steps
    for 2 h after each dose, 0.25 h to 12 h, 0.5 h to 24 h, then 2 h.

    Parameters
    ----------
    regimen : Regimen
    cycle_length : float, optional
        See :func:`regimen_cycles`.
    until : float, optional
        Last time (h); default the end of the last cycle.

    Returns
    -------
    ndarray, shape (n_times,)

    Examples
    --------
    >>> from pkmodel import q3w
    >>> t = exposure_times(q3w(16, cycles=2))
    >>> float(t[0]), float(t[-1]), bool(504.0 in t), bool(1.0 in t)
    (0.0, 1008.0, True, True)
    """
    structure = regimen_cycles(regimen, cycle_length)
    end = structure.end if until is None else float(until)
    events = [*structure.starts, structure.end]
    doses = []
    for e in regimen.expand():
        doses.append(e.time)
        events.append(e.time)
        if isinstance(e, Infusion):
            events.append(e.time + e.duration_h)
    grid = _dose_grid(0.0, end, doses, [t for t in events if t <= end])
    return grid


def _segment_area(t0, t1, c0, c1):
    """Linear-up/log-down area of segments (vectorised)."""
    dt = t1 - t0
    linear = dt * (c0 + c1) / 2.0
    falling = (c1 < c0) & (c1 > 0) & (c0 > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        log = dt * (c0 - c1) / np.log(c0 / c1)
    return np.where(falling, log, linear)


def _time_above(t0, t1, c0, c1, level: float) -> np.ndarray:
    """Time with c > level on segments, linear interpolation rising, log-linear falling (vectorised)."""
    dt = t1 - t0
    above0, above1 = c0 > level, c1 > level
    with np.errstate(divide="ignore", invalid="ignore"):
        frac_lin = (level - c0) / (c1 - c0)
        log_ok = (c0 > 0) & (c1 > 0) & (level > 0) & (c1 < c0)
        frac_log = np.log(level / c0) / np.log(c1 / c0)
    frac = np.where(log_ok, frac_log, frac_lin)
    frac = np.clip(np.nan_to_num(frac, nan=0.0), 0.0, 1.0)
    # both above: whole segment; falling through: before the crossing; rising through: after it
    part = np.where(
        above0 & above1, dt, np.where(above0, frac * dt, np.where(above1, (1.0 - frac) * dt, 0.0))
    )
    return part.sum(axis=0)


def _hermite(c0, c1, d0, d1, h):
    """Coefficients (a, b, c, e) of the cubic Hermite p(s) = a s³ + b s² + c s + e, s in [0, 1], through
    values c0, c1 and slopes d0, d1 (per hour) at the ends of a segment of length h."""
    a = 2.0 * (c0 - c1) + h * (d0 + d1)
    b = 3.0 * (c1 - c0) - h * (2.0 * d0 + d1)
    return a, b, h * d0, c0


def _cubic(coef, x):
    a, b, c, e = coef
    return ((a * x + b) * x + c) * x + e


def _extrema(coef) -> tuple[np.ndarray, np.ndarray]:
    """The roots of p'(s) = 3a s² + 2b s + c in (0, 1), NaN where there is none."""
    a, b, c, _ = coef
    qa, qb, qc = 3.0 * a, 2.0 * b, c
    with np.errstate(divide="ignore", invalid="ignore"):
        disc = qb * qb - 4.0 * qa * qc
        root = np.sqrt(np.where(disc >= 0, disc, np.nan))
        q = -0.5 * (qb + np.where(qb >= 0, root, -root))  # numerically stable quadratic roots
        scale = np.maximum(np.abs(qb), np.abs(qc))
        flat = np.abs(qa) <= 1e-12 * np.where(scale > 0, scale, 1.0)
        r1 = np.where(flat, -qc / qb, q / qa)
        r2 = np.where(flat, np.nan, qc / q)
    inside = lambda r: np.where((r > 0) & (r < 1), r, np.nan)  # noqa: E731
    return inside(r1), inside(r2)


def _hermite_max(coef) -> np.ndarray:
    """Largest value of each cubic at its interior extrema (−inf where none), same shape as coef."""
    best = np.full(np.shape(coef[0]), -np.inf)
    for r in _extrema(coef):
        value = _cubic(coef, np.nan_to_num(r))
        best = np.where(np.isnan(r), best, np.maximum(best, value))
    return best


def _hermite_above(coef, h, level: float) -> np.ndarray:
    """Time each cubic segment spends above `level` (same shape as coef), split at its extrema into
    monotone pieces; a crossing inside a piece is found by bisection on the cubic."""
    r1, r2 = _extrema(coef)
    breaks = np.sort(
        np.stack([np.zeros_like(r1), np.nan_to_num(r1), np.nan_to_num(r2), np.ones_like(r1)]), axis=0
    )
    total = np.zeros(np.shape(r1))
    for j in range(3):
        sa, sb = breaks[j], breaks[j + 1]
        pa, pb = _cubic(coef, sa) > level, _cubic(coef, sb) > level
        length = np.where(pa & pb, sb - sa, 0.0)
        cross = (pa != pb) & (sb > sa)
        if cross.any():
            idx = np.nonzero(cross)
            lo, hi = sa[idx], sb[idx]
            sub = tuple(np.asarray(x)[idx] if np.ndim(x) else x for x in coef)
            rising = ~pa[idx]
            for _ in range(60):
                mid = 0.5 * (lo + hi)
                above = _cubic(sub, mid) > level
                move_lo = above != rising  # below on a rising piece, above on a falling one
                lo = np.where(move_lo, mid, lo)
                hi = np.where(move_lo, hi, mid)
            s_cross = 0.5 * (lo + hi)
            length[idx] = np.where(rising, sb[idx] - s_cross, s_cross - sa[idx])
        total += length
    return total * h


def _rows(ids, analyte, cycle, metric, values, unit) -> tuple:
    """One block of rows (one value per subject); assembled by :func:`_finish`."""
    return (np.asarray(ids), analyte, str(cycle), metric, np.asarray(values, dtype=float), unit)


def _finish(blocks: list[tuple]) -> pd.DataFrame:
    if not blocks:
        return pd.DataFrame(columns=list(METRIC_COLUMNS))
    sizes = np.array([len(b[0]) for b in blocks])

    def labels(k: int) -> pd.Categorical:
        # categorical text columns: a few bytes per row, so large populations stay small in memory
        names = [b[k] for b in blocks]
        categories = list(dict.fromkeys(names))
        codes = np.repeat([categories.index(x) for x in names], sizes)
        return pd.Categorical.from_codes(codes, categories=categories)

    return pd.DataFrame(
        {
            "ID": np.concatenate([b[0] for b in blocks]),
            "analyte": labels(1),
            "cycle": labels(2),
            "metric": labels(3),
            "value": np.concatenate([b[4] for b in blocks]),
            "unit": labels(5),
        }
    )


def _cycle_frames(ids, analyte, label, unit, window: dict[str, np.ndarray], thresholds, tau) -> list:
    frames = [
        _rows(ids, analyte, label, "Cmax", window["cmax"], unit),
        _rows(ids, analyte, label, "Ctrough", window["ctrough"], unit),
        _rows(ids, analyte, label, "AUC", window["auc"], f"{unit}·h"),
        _rows(ids, analyte, label, "AUC_week", window["auc"] * HOURS_PER_WEEK / tau, f"{unit}·h/week"),
        _rows(ids, analyte, label, "Cavg", window["auc"] / tau, unit),
    ]
    for level, hours in zip(thresholds, window["above"], strict=True):
        frames.append(_rows(ids, analyte, label, f"time_above_{level:g}", hours, "h"))
    return frames


def _until(until, structure: Cycles, ns: int, last_time: float | None = None) -> np.ndarray:
    if until is None:
        out = np.full(ns, structure.end)
    else:
        out = np.atleast_1d(np.asarray(until, dtype=float))
        if out.size == 1:
            out = np.full(ns, float(out[0]))
        if out.shape != (ns,):
            raise SimulationError(
                f"until has {out.size} values for {ns} subjects; give one time (h) or one per subject"
            )
    bad = ~np.isfinite(out) | (out <= 0)
    if bad.any():
        raise SimulationError(
            f"until = {float(out[bad][0])!r} h: the end of the exposure window must be a finite time > 0 h"
        )
    if last_time is not None and np.any(out > last_time + _TOL):
        raise SimulationError(
            f"until = {out.max():g} h lies after the last simulated time {last_time:g} h; simulate longer or "
            "lower until"
        )
    return out


# ------------------------------------------------------------------------------------- exact route


class _Augmented:
    """Per-subject augmented linear system ``z = [x (n); AUC (k); infusion rates (q); 1]``."""

    def __init__(self, model: Model, p: np.ndarray, analytes: Sequence[str], infused: Sequence[int]):
        num = model.numeric
        ns, n = p.shape[1], num.n_states
        k, q = len(analytes), len(infused)
        self.n, self.k, self.q = n, k, q
        self.m = m = n + k + q + 1
        K = num.rate_matrix(p)
        b = num.input_vector(p)
        # output coefficients: y = C x + d, from evaluations at 0 and the unit vectors
        index = [num.output_names.index(a) for a in analytes]
        zero = np.zeros((n, ns))
        with np.errstate(divide="ignore", invalid="ignore"):
            d = num.outputs(0.0, zero, p)[index]  # (k, ns)
            C = np.empty((ns, k, n))
            for j in range(n):
                x = zero.copy()
                x[j] = 1.0
                C[:, :, j] = (num.outputs(0.0, x, p)[index] - d).T
        A = np.zeros((ns, m, m))
        A[:, :n, :n] = K
        A[:, n : n + k, :n] = C
        A[:, n : n + k, m - 1] = d.T
        A[:, :n, m - 1] = b
        for r, i in enumerate(infused):
            A[:, i, n + k + r] = 1.0
        self.A = A
        self.C = C
        self.d = d.T  # (ns, k)
        self.K = K
        self.rate_index = {i: n + k + r for r, i in enumerate(infused)}
        self._cache: dict[float, np.ndarray] = {}

    def phi(self, delta: float) -> np.ndarray:
        key = round(float(delta), 12)
        hit = self._cache.get(key)
        if hit is None:
            hit = scipy.linalg.expm(self.A * key)
            if (len(self._cache) + 1) * hit.nbytes <= _CACHE_BYTES:
                self._cache[key] = hit
        return hit

    def advance(self, z: np.ndarray, delta: float) -> np.ndarray:
        if delta <= 0:
            return z
        return np.matmul(self.phi(delta), z[..., None])[..., 0]

    def concentrations(self, z: np.ndarray) -> np.ndarray:
        """Analyte values (ns, k)."""
        return np.einsum("skn,sn->sk", self.C, z[:, : self.n]) + self.d

    def slopes(self, z: np.ndarray) -> np.ndarray:
        """Exact time derivatives of the analytes (ns, k): C·(dx/dt), dx/dt = K·x + inputs."""
        dx = np.matmul(self.A[:, : self.n, :], z[..., None])[..., 0]
        return np.einsum("skn,sn->sk", self.C, dx)


class _Events:
    """Dose actions by time: boluses (state, amounts), infusion starts/ends (rate state, rates)."""

    def __init__(self, plan, system: _Augmented):
        self.actions: dict[float, list[tuple[int, np.ndarray]]] = {}
        self.doses: list[float] = []
        for t, i, a in plan.boluses:
            self._add(t, i, a)
            self.doses.append(float(t))
        for start, end, i, r in plan.infusions:
            j = system.rate_index[i]
            self._add(end, j, -r, first=True)
            self._add(start, j, r)
            self.doses.append(float(start))
        self.times = sorted(self.actions)

    def _add(self, t: float, index: int, delta: np.ndarray, first: bool = False) -> None:
        key = round(float(t), 9)
        lst = self.actions.setdefault(key, [])
        if first:
            lst.insert(0, (index, delta))
        else:
            lst.append((index, delta))

    def apply(self, z: np.ndarray, t: float) -> np.ndarray:
        for index, delta in self.actions.get(round(float(t), 9), ()):
            z[:, index] += delta
        return z

    def between(self, a: float, b: float) -> list[float]:
        """Event times in [a, b)."""
        return [t for t in self.times if a - _TOL <= t < b - _TOL]


def _window_exact(system: _Augmented, events: _Events, z: np.ndarray, start: float, end: float, thresholds):
    """Metrics of [start, end) from the pre-event state z(start⁻); returns (metrics, z(end⁻))."""
    n, k = system.n, system.k
    inside = events.between(start, end)
    doses = [d for d in events.doses if start - _TOL <= d < end - _TOL]
    grid = _dose_grid(start, end, doses, inside)
    event_set = {round(t, 9) for t in inside}
    z = z.copy()
    z[:, n : n + k] = 0.0
    ns = z.shape[0]
    shape = (len(grid), ns, k)
    left, right, dleft, dright = np.empty(shape), np.empty(shape), np.empty(shape), np.empty(shape)
    previous = start
    for g, t in enumerate(grid):
        z = system.advance(z, t - previous)
        previous = t
        left[g], dleft[g] = system.concentrations(z), system.slopes(z)
        if t < end - _TOL and round(t, 9) in event_set:
            z = events.apply(z, t)
            right[g], dright[g] = system.concentrations(z), system.slopes(z)
        else:
            right[g], dright[g] = left[g], dleft[g]
    auc = z[:, n : n + k].copy()  # (ns, k)
    h = np.diff(grid)[:, None]
    out = {"cmax": [], "ctrough": left[-1].T, "auc": auc.T, "above": []}
    for a in range(k):
        coef = _hermite(right[:-1, :, a], left[1:, :, a], dright[:-1, :, a], dleft[1:, :, a], h)
        grid_max = np.maximum(right[:, :, a].max(axis=0), left[:, :, a].max(axis=0))
        out["cmax"].append(np.maximum(grid_max, _hermite_max(coef).max(axis=0)))
        out["above"].append([_hermite_above(coef, h, level).sum(axis=0) for level in thresholds[a]])
    return out, z


def _steady_state(
    system: _Augmented, events: _Events, z_template: np.ndarray, start: float, tau: float
) -> np.ndarray:
    """Pre-dose state of the cycle at steady state: x = (I − e^{Kτ})⁻¹ m."""
    n = system.n
    z = np.zeros_like(z_template)
    z[:, -1] = 1.0
    previous = start
    for t in [*events.between(start, start + tau), start + tau]:
        z = system.advance(z, t - previous)
        previous = t
        if t < start + tau - _TOL:
            z = events.apply(z, t)
    m = z[:, :n]
    M = scipy.linalg.expm(system.K * tau)
    A = np.eye(n)[None] - M
    cond = np.linalg.cond(A)
    if np.any(~np.isfinite(cond)) or np.any(cond > 1e14):
        raise SimulationError(
            "steady state does not exist: the model does not eliminate the dosed drug, so amounts grow without "
            "bound over repeated cycles; ask for cycle numbers instead of 'ss'"
        )
    out = np.zeros_like(z_template)
    out[:, :n] = np.linalg.solve(A, m[..., None])[..., 0]
    out[:, -1] = 1.0
    return out


def _auc_until(system: _Augmented, events: _Events, z0: np.ndarray, until: np.ndarray) -> np.ndarray:
    """AUC of each analyte over [0, until_s] per subject (ns, k), exactly."""
    n, k = system.n, system.k
    z = z0.copy()
    z[:, n : n + k] = 0.0
    result = np.empty((z.shape[0], k))
    done = np.zeros(z.shape[0], bool)
    previous = 0.0
    for t in [*events.times, math.inf]:
        ending = ~done & (until <= t + _TOL)
        if ending.any():
            idx = np.flatnonzero(ending)
            zz = _advance_subset(system.A[idx], z[idx], until[idx] - previous)
            result[idx] = zz[:, n : n + k]
            done |= ending
        if done.all() or not math.isfinite(t):
            break
        z = system.advance(z, t - previous)
        previous = t
        z = events.apply(z, t)
    return result


def _advance_subset(A: np.ndarray, z: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """Advance each subject (rows of A and z) by its own Δ >= 0."""
    phi = scipy.linalg.expm(A * np.maximum(delta, 0.0)[:, None, None])
    return np.matmul(phi, z[..., None])[..., 0]


def exposure_metrics(
    model: Model | str,
    regimen: Regimen,
    *,
    parameters: Mapping[str, Any] | Any = None,
    weight: float | np.ndarray | None = None,
    analytes: str | Sequence[str] | None = None,
    cycles: Sequence[int | str] | int | str = (1, "ss"),
    threshold: Mapping[str, float | Sequence[float]] | None = None,
    until: float | np.ndarray | None = None,
    cycle_length: float | None = None,
) -> pd.DataFrame:
    """Exposure metrics of a linear model under a regimen, from the exact (matrix-exponential) solution.

    Parameters
    ----------
    model : Model or str
        A linear model (see :attr:`pkmodel.Model.is_linear`).
    regimen : Regimen
        One regimen for every subject (see :func:`regimen_cycles` for its cycles).
    parameters, weight
        Subjects, as for :func:`pkmodel.simulate` (dict of arrays or a DataFrame with one row per
        subject; WT for mg/kg doses).
    analytes : str or sequence of str, optional
        Outputs to report; default every output linear in the amounts (:func:`linear_outputs`).
    cycles : sequence of int, "last" or "ss"
        Cycles to report (1-based); ``"ss"`` is steady state.  Default ``(1, "ss")``.
    threshold : mapping of str to float or sequence of float, optional
        Levels per analyte (its unit) for ``time_above_X`` (h per cycle), e.g. ``{"SN38": 5.0}``.
    until : float or ndarray, shape (n_subjects,), optional
        End (h) of the whole-treatment window for cycle ``"all"`` (AUC, AUC_week, Cavg); default the end
        of the last cycle.  May lie after it (exposure decays after the last dose).
    cycle_length : float, optional
        Cycle length τ (h) when it cannot be inferred from the regimen.

    Returns
    -------
    pandas.DataFrame
        Columns ID, analyte, cycle (text: "1", ..., "ss", "all"), metric (Cmax, Ctrough, AUC, AUC_week,
        Cavg, time_above_X, dose_intensity), value, unit.

    Raises
    ------
    SimulationError
        Nonlinear model or output, unknown analyte, bad cycle, threshold or until.
    DosingError
        A regimen whose cycles cannot be determined.

    Examples
    --------
    >>> from pkmodel import load_model, q3w
    >>> m = load_model("adc_esg401")
    >>> t = exposure_metrics(m, q3w(16, cycles=4), weight=70.0, analytes="SN38", threshold={"SN38": 5.0})
    >>> sorted(t.metric.unique())  # doctest: +NORMALIZE_WHITESPACE
    ['AUC', 'AUC_week', 'Cavg', 'Cmax', 'Ctrough', 'dose_intensity', 'time_above_5']
    """
    from .simulation import _broadcast_plan, _plan, _subject_arguments

    if isinstance(model, str):
        from .model import load_model

        model = load_model(model)
    if not model.is_linear:
        raise SimulationError(
            f"exposure_metrics needs a linear model; {model.name} is nonlinear ("
            + "; ".join(model.linearity.reasons)
            + "): simulate it on exposure_times(regimen) and use exposure_from_result"
        )
    structure = regimen_cycles(regimen, cycle_length)
    labels = _cycle_labels(cycles, structure, allow_ss=True)
    names = _analytes(analytes, linear_outputs(model), list(model.outputs), model.name)
    levels = _thresholds(threshold, names)
    p, ids, wt = _subject_arguments(model, parameters, weight)
    ns = len(ids)
    horizon = _until(until, structure, ns)
    plan = _broadcast_plan(_plan(model, regimen, wt), ns)
    infused = sorted({i for _, _, i, _ in plan.infusions})
    system = _Augmented(model, p, names, infused)
    events = _Events(plan, system)
    thresholds = [levels.get(a, []) for a in names]

    z0 = np.zeros((ns, system.m))
    z0[:, : system.n] = model.numeric.initial(p).T
    z0[:, -1] = 1.0

    units = {a: model.outputs[a].unit for a in names}
    frames: list[tuple] = []
    numbered = sorted(c for c in labels if c != "ss")
    z = z0.copy()
    position = 0.0
    results: dict[Any, dict] = {}
    for c in range(1, (max(numbered) if numbered else 0) + 1):
        start = structure.starts[c - 1]
        z = _advance_events(system, events, z, position, start)
        if c in numbered:
            window, z = _window_exact(system, events, z, start, start + structure.length, thresholds)
            results[c] = window
            position = start + structure.length
        else:
            position = start
    if "ss" in labels:
        start = structure.starts[0]
        zss = _steady_state(system, events, z0, start, structure.length)
        results["ss"], _ = _window_exact(system, events, zss, start, start + structure.length, thresholds)
    for label in labels:
        window = results[label]
        for a, name in enumerate(names):
            per = {
                "cmax": window["cmax"][a],
                "ctrough": window["ctrough"][a],
                "auc": window["auc"][a],
                "above": window["above"][a],
            }
            frames += _cycle_frames(ids, name, label, units[name], per, thresholds[a], structure.length)
    auc_all = _auc_until(system, events, z0, horizon)
    for a, name in enumerate(names):
        frames += [
            _rows(ids, name, "all", "AUC", auc_all[:, a], f"{units[name]}·h"),
            _rows(
                ids,
                name,
                "all",
                "AUC_week",
                auc_all[:, a] * HOURS_PER_WEEK / horizon,
                f"{units[name]}·h/week",
            ),
            _rows(ids, name, "all", "Cavg", auc_all[:, a] / horizon, units[name]),
        ]
    frames.append(
        _rows(
            ids,
            "dose",
            "all",
            "dose_intensity",
            np.full(ns, structure.dose_intensity),
            structure.intensity_unit,
        )
    )
    return _finish(frames)


def _advance_events(system: _Augmented, events: _Events, z: np.ndarray, a: float, b: float) -> np.ndarray:
    """From z(a⁻) to z(b⁻), applying the events in [a, b)."""
    previous = a
    for t in [*events.between(a, b), b]:
        z = system.advance(z, t - previous)
        previous = t
        if t < b - _TOL:
            z = events.apply(z, t)
    return z


# --------------------------------------------------------------------------------- from a simulation


def exposure_from_result(
    result: SimulationResult,
    regimen: Regimen,
    *,
    analytes: str | Sequence[str] | None = None,
    cycles: Sequence[int | str] | int | str = (1, "last"),
    threshold: Mapping[str, float | Sequence[float]] | None = None,
    until: float | np.ndarray | None = None,
    cycle_length: float | None = None,
) -> pd.DataFrame:
    """Exposure metrics from a simulated grid (any model, any engine).

    Each requested cycle's boundaries must be among ``result.times`` (use :func:`exposure_times`).
    AUC: linear-up/log-down trapezoids; Cmax: largest sample; Ctrough: the sample at the next cycle start
    (for infusions, the simulated value there is before the dose); time above a level: linear
    interpolation rising, log-linear falling.  Boluses inside a cycle are refused, because a grid
    holds only the value after the jump.

    Parameters
    ----------
    result : SimulationResult
        Outputs on a grid that starts at 0 h (for cycle "all").
    regimen : Regimen
        The regimen simulated (the same for every subject).
    analytes : str or sequence of str, optional
        Outputs to report; default all of ``result.outputs``.
    cycles : sequence of int or "last"
        Cycles to report; default ``(1, "last")``.  Steady state ("ss") needs :func:`exposure_metrics`.
    threshold, until, cycle_length
        As for :func:`exposure_metrics`; ``until`` may not exceed the last simulated time.

    Returns
    -------
    pandas.DataFrame
        Columns ID, analyte, cycle, metric, value, unit (see :func:`exposure_metrics`).

    Raises
    ------
    SimulationError
        Missing cycle boundaries in the grid, a bolus inside a cycle, unknown analyte, bad until.

    Examples
    --------
    >>> from pkmodel import load_model, parse_regimen, simulate
    >>> m = load_model("one_compartment_iv")
    >>> reg = parse_regimen("100 mg q24h x2 over 1h")
    >>> res = simulate(m, reg, exposure_times(reg))
    >>> t = exposure_from_result(res, reg, cycles=[1])
    >>> round(float(t.query("metric == 'Ctrough' and cycle == '1'")["value"].iloc[0]), 4)  # 100(1 − e^{−0.1})e^{−2.3}
    0.9541
    """
    if not isinstance(result, SimulationResult):
        raise SimulationError(
            f"result must be a SimulationResult from simulate(), got {type(result).__name__}"
        )
    structure = regimen_cycles(regimen, cycle_length)
    labels = _cycle_labels(cycles, structure, allow_ss=False)
    outputs = list(result.outputs)
    names = _analytes(analytes, outputs, outputs, "the simulation")
    levels = _thresholds(threshold, names)
    t = np.asarray(result.times, dtype=float)
    ids = result.ids
    ns = len(ids)
    boluses = [e.time for e in regimen.expand() if isinstance(e, Bolus)]

    def index_of(time: float, what: str) -> int:
        k = int(np.searchsorted(t, time - _TOL))
        if k >= len(t) or abs(t[k] - time) > _TOL:
            raise SimulationError(
                f"the simulation has no time {time:g} h ({what}); simulate on exposure_times(regimen) or add "
                "every cycle boundary to times"
            )
        return k

    frames: list[tuple] = []
    for label in labels:
        start = structure.starts[label - 1]
        end = start + structure.length
        inside = [b for b in boluses if start + _TOL < b <= end + _TOL]
        if inside:
            raise SimulationError(
                f"cycle {label} has a bolus at {inside[0]:g} h: a simulated grid holds only the value after the "
                "jump, so AUC and Ctrough would be wrong; use exposure_metrics (exact) or give infusions"
            )
        i0, i1 = index_of(start, f"start of cycle {label}"), index_of(end, f"end of cycle {label}")
        tt = t[i0 : i1 + 1]
        for name in names:
            c = result.output(name)[i0 : i1 + 1]
            seg = (tt[:-1, None], tt[1:, None], c[:-1], c[1:])
            window = {
                "cmax": c.max(axis=0),
                "ctrough": c[-1],
                "auc": _segment_area(*seg).sum(axis=0),
                "above": [_time_above(*seg, level) for level in levels.get(name, [])],
            }
            frames += _cycle_frames(
                ids, name, label, result.units[name], window, levels.get(name, []), structure.length
            )
    if t[0] > _TOL:
        raise SimulationError(
            f"the simulation starts at {t[0]:g} h; cycle 'all' needs the grid to start at 0 h"
        )
    horizon = _until(until, structure, ns, last_time=float(t[-1]))
    inside = [b for b in boluses if _TOL < b <= horizon.max() + _TOL]
    if inside:
        raise SimulationError(
            f"the regimen has a bolus at {inside[0]:g} h inside [0, until]: a simulated grid holds only the "
            "value after the jump; use exposure_metrics (exact) or give infusions"
        )
    for name in names:
        c = result.output(name)
        auc = np.empty(ns)
        for s in range(ns):
            k = int(np.searchsorted(t, horizon[s] - _TOL))
            full = _segment_area(t[:k], t[1 : k + 1], c[:k, s], c[1 : k + 1, s]).sum() if k > 0 else 0.0
            if k < len(t) and t[k] > horizon[s] + _TOL:
                # partial last segment [t[k-1], horizon]: interpolate as the trapezoid rule does
                full -= _segment_area(t[k - 1], t[k], c[k - 1, s], c[k, s])
                ck = _interpolate(t[k - 1], t[k], c[k - 1, s], c[k, s], horizon[s])
                full += _segment_area(t[k - 1], horizon[s], c[k - 1, s], ck)
            auc[s] = full
        unit = result.units[name]
        frames += [
            _rows(ids, name, "all", "AUC", auc, f"{unit}·h"),
            _rows(ids, name, "all", "AUC_week", auc * HOURS_PER_WEEK / horizon, f"{unit}·h/week"),
            _rows(ids, name, "all", "Cavg", auc / horizon, unit),
        ]
    frames.append(
        _rows(
            ids,
            "dose",
            "all",
            "dose_intensity",
            np.full(ns, structure.dose_intensity),
            structure.intensity_unit,
        )
    )
    return _finish(frames)


def _interpolate(t0: float, t1: float, c0: float, c1: float, x: float) -> float:
    """Value at x in [t0, t1]: log-linear on a falling positive segment, linear otherwise."""
    w = (x - t0) / (t1 - t0)
    if c1 < c0 and c1 > 0 and c0 > 0:
        return float(c0 * (c1 / c0) ** w)
    return float(c0 + w * (c1 - c0))
