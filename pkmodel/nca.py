"""Non-compartmental analysis (NCA) of concentration-time profiles.

Conventions
-----------
* Times in h, concentrations in any unit (µg/mL for antibody, ng/mL for SN-38), doses in mg.
  With µg/mL (= mg/L) and mg, clearance is in L/h.
* Times are taken relative to the dose (``t - dose_time``); every reported time (tmax, tlast,
  the λz interval) is time after dose.  Samples before the dose are an error: pass the profile of
  one dosing interval or move `dose_time`.
* Concentrations below the limit of quantification (BLQ) are entered as 0.  Zeros enter the AUC
  (a segment ending at 0 is a linear trapezoid) but never the λz regression.  Trailing zeros do
  not move tlast (the last positive concentration).  Unlike PKNCA's default, zeros *between*
  measurable concentrations are kept in the AUC, not dropped.
* AUC starts at the first sample.  For AUC from the dose, include a sample at the dose time
  (0 for an extravascular first dose, the pre-dose trough at steady state, a back-extrapolated C0
  after an IV bolus).

AUC rules
---------
``"linear-up/log-down"`` (default): linear trapezoid ``Δt (c0 + c1)/2`` when the concentration
rises or stays equal, log trapezoid ``Δt (c0 - c1)/ln(c0/c1)`` when it falls and both values are
positive (exact for a mono-exponential decline); ``"linear"``: linear trapezoid everywhere.
Interpolation between samples follows the same rule (log-linear on a falling positive segment,
linear otherwise).  Beyond tlast a concentration is extrapolated as ``Clast·exp(-λz (t - tlast))``.

Terminal slope λz
-----------------
Log-linear least squares on the last 3, 4, ..., N positive concentrations after Cmax (the Cmax
sample excluded).  Among the fits with λz > 0, the one with the largest adjusted R²
``1 - (1 - R²)(n - 1)/(n - 2)`` is chosen, and among the fits whose adjusted R² is within 1e-4 of
that largest value, the one with the most points (the "best fit" rule of Phoenix WinNonlin and
PKNCA; PKNCA takes the largest adjusted R² over all fits, including those with λz <= 0).  With
``lambda_z_points=n`` the last n such points are used as they are.  If λz cannot be estimated the
result holds NaN and says why in ``lambda_z_reason``; this is not an error.

References
----------
Gabrielsson J, Weiner D. Pharmacokinetic and Pharmacodynamic Data Analysis: Concepts and
Applications, 5th ed. Swedish Pharmaceutical Press, 2016 (chapter 2, NCA).
PKNCA (Denney W, Buckeridge C, Duvvuri S), R package, https://CRAN.R-project.org/package=PKNCA,
function ``pk.calc.half.life`` (best-fit λz rule, adj.r.squared.factor = 1e-4).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from pkmodel.errors import NCAError

__all__ = [
    "ADJ_R2_TOLERANCE",
    "METHODS",
    "MIN_LAMBDA_Z_POINTS",
    "NCAResult",
    "accumulation_ratio",
    "accumulation_ratio_from_lambda",
    "nca",
    "nca_table",
]

#: AUC methods accepted by :func:`nca`.
METHODS: tuple[str, ...] = ("linear-up/log-down", "linear")
#: Adjusted-R² tolerance within which a λz fit with more points is preferred.
ADJ_R2_TOLERANCE = 1e-4
#: Fewest points of a λz regression.
MIN_LAMBDA_Z_POINTS = 3


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python scalar, so that messages read ``2``, not ``np.int64(2)``."""
    return value.item() if isinstance(value, np.generic) else value


@dataclass(frozen=True)
class NCAResult:
    """NCA parameters of one profile (times relative to the dose; NaN when not computable).

    Attributes
    ----------
    cmax, tmax : float
        Largest observed concentration and the first time it occurs (h); tmax NaN if all are 0.
    cmin : float
        Smallest observed concentration over the whole profile, or over ``[0, tau]`` when `tau` is
        given (the steady-state Cmin).  Includes zeros, so it is 0 for a single-dose profile that
        starts with a pre-dose zero.
    clast, tlast : float
        Last positive concentration and its time (h); clast 0 and tlast NaN if all are 0.
    auc_last : float
        AUC from the first sample to tlast (conc·h).
    auc_tau : float
        AUC over ``[0, tau]`` after the dose (conc·h); requires a sample at the dose time.  Inside
        the samples the end point is interpolated; beyond tlast the area is extrapolated with λz.
        NaN if `tau` is not given or it cannot be computed (see `notes`).
    auc_inf : float
        ``auc_last + clast/λz`` (observed clast), conc·h.
    auc_inf_pct_extrap : float
        ``100·(clast/λz)/auc_inf`` (%).
    lambda_z : float
        Terminal rate constant (1/h).
    lambda_z_n_points : int
        Points in the chosen regression (0 if none).
    lambda_z_r2, lambda_z_r2_adj : float
        R² and adjusted R² of the chosen regression.
    lambda_z_interval : tuple of float
        First and last time (h) of the regression points.
    lambda_z_reason : str
        Empty when λz was estimated; otherwise why not.
    half_life : float
        ``ln 2 / λz`` (h).
    cavg : float
        ``auc_tau / tau``.
    clearance : float
        ``dose / auc_tau`` when `tau` is given (valid at steady state only), else
        ``dose / auc_inf``; apparent (CL/F) after extravascular dosing.  NaN without a dose.
    method : str
        AUC method used.
    dose, tau : float
        Inputs (NaN when not given).
    notes : tuple of str
        Why a value is NaN or how it was obtained, when that is not the default path.
    """

    cmax: float
    tmax: float
    cmin: float
    clast: float
    tlast: float
    auc_last: float
    auc_tau: float
    auc_inf: float
    auc_inf_pct_extrap: float
    lambda_z: float
    lambda_z_n_points: int
    lambda_z_r2: float
    lambda_z_r2_adj: float
    lambda_z_interval: tuple[float, float]
    lambda_z_reason: str
    half_life: float
    cavg: float
    clearance: float
    method: str
    dose: float
    tau: float
    notes: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """Flat dictionary: the λz interval as ``lambda_z_time_first``/``lambda_z_time_last``, notes
        joined by ``"; "``.

        Examples
        --------
        >>> d = nca([0, 1, 2, 4, 6], [0.0, 8.0, 4.0, 1.0, 0.25]).to_dict()
        >>> d["cmax"], d["lambda_z_time_first"], d["lambda_z_time_last"], d["notes"]
        (8.0, 2.0, 6.0, '')
        >>> print(nca([0, 1, 2, 4], [0.0, 8.0, 4.0, 1.0]).to_dict()["notes"])  # doctest: +ELLIPSIS
        λz not estimated: only 2 positive concentration(s) after Cmax; λz needs at least 3 (...)
        """
        row = asdict(self)
        first, last = row.pop("lambda_z_interval")
        notes = row.pop("notes")
        out: dict[str, Any] = {}
        for key, value in row.items():
            out[key] = value
            if key == "lambda_z_r2_adj":
                out["lambda_z_time_first"] = first
                out["lambda_z_time_last"] = last
        out["notes"] = "; ".join(notes)
        return out


# --------------------------------------------------------------------------------------------------
# input checks


def _check_profile(times: Any, conc: Any) -> tuple[np.ndarray, np.ndarray]:
    arrays = []
    for name, data in (("times", times), ("conc", conc)):
        try:
            arr = np.asarray(data, dtype=float)
        except (TypeError, ValueError):
            raise NCAError(f"{name} must be numbers; convert it to a numeric 1-D array") from None
        if arr.ndim != 1:
            raise NCAError(f"{name} must be 1-D (one profile, times along axis 0), got shape {arr.shape}")
        arrays.append(arr)
    t, c = arrays
    if t.size != c.size:
        raise NCAError(
            f"times has {t.size} entries but conc has {c.size}; pass one concentration per sample time"
        )
    if t.size == 0:
        raise NCAError("the profile has no samples; pass at least one (time, concentration) pair")
    bad = np.flatnonzero(~np.isfinite(t))
    if bad.size:
        i = int(bad[0])
        raise NCAError(f"times[{i}] = {float(t[i])!r} is not finite; every sample needs a time in h")
    step = np.diff(t)
    bad = np.flatnonzero(step <= 0)
    if bad.size:
        i = int(bad[0])
        if step[i] == 0:
            raise NCAError(
                f"times[{i + 1}] = {float(t[i + 1])!r} duplicates times[{i}]; times must be strictly "
                "increasing: average or remove repeated samples"
            )
        raise NCAError(
            f"times[{i + 1}] = {float(t[i + 1])!r} is earlier than times[{i}] = {float(t[i])!r}; times must "
            "be strictly increasing: sort the samples by time"
        )
    bad = np.flatnonzero(np.isnan(c))
    if bad.size:
        i = int(bad[0])
        raise NCAError(
            f"conc[{i}] (time {t[i]:g} h) is NaN ({bad.size} NaN in total); NCA needs a value at every "
            "sample: drop the sample or enter a BLQ value as 0"
        )
    bad = np.flatnonzero(~np.isfinite(c) | (c < 0))
    if bad.size:
        i = int(bad[0])
        raise NCAError(
            f"conc[{i}] = {float(c[i])!r} (time {t[i]:g} h) is not a finite non-negative concentration; "
            "concentrations must be >= 0 (enter BLQ as 0)"
        )
    return t, c


def _check_positive(name: str, value: Any, unit: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise NCAError(
            f"{name}={_plain(value)!r} is not a number; pass a positive number in {unit}"
        ) from None
    if not (math.isfinite(x) and x > 0):
        raise NCAError(f"{name}={_plain(value)!r} must be finite and positive (in {unit})")
    return x


# --------------------------------------------------------------------------------------------------
# areas and interpolation


def _log_segments(c0: np.ndarray, c1: np.ndarray, method: str) -> np.ndarray:
    """Which segments use the log rule: falling and both positive (linear-up/log-down only)."""
    if method == "linear":
        return np.zeros(c0.shape, dtype=bool)
    return (c1 < c0) & (c1 > 0)


def _segment_areas(t: np.ndarray, c: np.ndarray, method: str) -> np.ndarray:
    dt = np.diff(t)
    c0, c1 = c[:-1], c[1:]
    log = _log_segments(c0, c1, method)
    area = dt * (c0 + c1) / 2.0
    if np.any(log):
        area[log] = dt[log] * (c0[log] - c1[log]) / np.log(c0[log] / c1[log])
    return area


def _interpolate(t: np.ndarray, c: np.ndarray, x: float, method: str) -> float:
    """Concentration at x, t[0] <= x <= t[-1], by the segment rule of `method`."""
    i = int(np.searchsorted(t, x, side="right")) - 1
    if i >= t.size - 1:
        return float(c[-1])
    c0, c1 = c[i : i + 1], c[i + 1 : i + 2]
    fraction = (x - t[i]) / (t[i + 1] - t[i])
    if _log_segments(c0, c1, method)[0]:
        return float(c0[0] * math.exp(math.log(c1[0] / c0[0]) * fraction))
    return float(c0[0] + (c1[0] - c0[0]) * fraction)


def _auc_to(t: np.ndarray, c: np.ndarray, end: float, method: str) -> float:
    """AUC from t[0] to `end` (t[0] <= end <= t[-1])."""
    inside = t < end
    tt = np.append(t[inside], end)
    cc = np.append(c[inside], _interpolate(t, c, end, method))
    return float(np.sum(_segment_areas(tt, cc, method)))


# --------------------------------------------------------------------------------------------------
# lambda z


@dataclass(frozen=True)
class _LambdaZ:
    lambda_z: float = math.nan
    n_points: int = 0
    r2: float = math.nan
    r2_adj: float = math.nan
    interval: tuple[float, float] = (math.nan, math.nan)
    reason: str = ""


def _loglinear_fit(t: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Least-squares slope of y on t, R² and adjusted R² (n >= 3)."""
    n = t.size
    tc = t - t.mean()
    yc = y - y.mean()
    slope = float(np.dot(tc, yc) / np.dot(tc, tc))
    ss_tot = float(np.dot(yc, yc))
    residual = yc - slope * tc
    ss_res = float(np.dot(residual, residual))
    if ss_tot == 0.0:
        return slope, math.nan, math.nan
    r2 = 1.0 - ss_res / ss_tot
    return slope, r2, 1.0 - (1.0 - r2) * (n - 1) / (n - 2)


def _lambda_z(t: np.ndarray, c: np.ndarray, i_max: int, n_fixed: int | None) -> _LambdaZ:
    after = np.flatnonzero((np.arange(t.size) > i_max) & (c > 0))
    needed = n_fixed if n_fixed is not None else MIN_LAMBDA_Z_POINTS
    if after.size < needed:
        what = f"lambda_z_points={n_fixed}" if n_fixed is not None else f"at least {MIN_LAMBDA_Z_POINTS}"
        return _LambdaZ(
            reason=(
                f"only {after.size} positive concentration(s) after Cmax; λz needs {what} "
                "(Cmax and zero/BLQ values are excluded)"
            )
        )
    tt, yy = t[after], np.log(c[after])
    sizes = [n_fixed] if n_fixed is not None else list(range(MIN_LAMBDA_Z_POINTS, after.size + 1))
    fits = []
    for n in sizes:
        slope, r2, r2_adj = _loglinear_fit(tt[-n:], yy[-n:])
        fits.append((n, -slope, r2, r2_adj))
    valid = [f for f in fits if f[1] > 0 and math.isfinite(f[3])]
    if not valid:
        span = f"the last {n_fixed}" if n_fixed is not None else f"the last 3..{after.size}"
        return _LambdaZ(
            reason=f"no log-linear fit of {span} points after Cmax has a decreasing slope (λz > 0)"
        )
    best = max(f[3] for f in valid)
    n, lam, r2, r2_adj = max((f for f in valid if f[3] >= best - ADJ_R2_TOLERANCE), key=lambda f: f[0])
    return _LambdaZ(
        lambda_z=lam,
        n_points=n,
        r2=r2,
        r2_adj=r2_adj,
        interval=(float(tt[-n]), float(tt[-1])),
    )


# --------------------------------------------------------------------------------------------------
# public functions


def nca(
    times: Any,
    conc: Any,
    *,
    dose: float | None = None,
    tau: float | None = None,
    method: str = "linear-up/log-down",
    lambda_z_points: int | None = None,
    dose_time: float = 0.0,
) -> NCAResult:
    """Non-compartmental analysis of one concentration-time profile.

    See the module docstring for the AUC rule, the λz selection and the handling of zeros (BLQ).

    Parameters
    ----------
    times : array_like, shape (n,)
        Sample times in h, strictly increasing, none before `dose_time`.
    conc : array_like, shape (n,)
        Concentrations (>= 0; BLQ as 0, no NaN).
    dose : float, optional
        Dose in mg, for the clearance.
    tau : float, optional
        Dosing interval in h, for auc_tau, cavg, the steady-state cmin and ``clearance =
        dose/auc_tau``; the profile is then taken to be at steady state.
    method : {"linear-up/log-down", "linear"}
        AUC and interpolation rule.
    lambda_z_points : int, optional
        Use exactly the last n (>= 3) positive points after Cmax for λz instead of the best-fit
        search.
    dose_time : float
        Time of the dose in h, in the time frame of `times`; reported times are after this dose.

    Returns
    -------
    NCAResult
        Frozen; ``to_dict()`` flattens it.

    Raises
    ------
    NCAError
        Times not strictly increasing or not finite, NaN or negative concentrations, length
        mismatch, samples before the dose, invalid `dose`, `tau`, `method` or `lambda_z_points`.

    Examples
    --------
    Mono-exponential decline ``C = 10 exp(-0.1 t)``: λz is 0.1 and AUC∞ is 10/0.1.

    >>> import numpy as np
    >>> t = np.array([0.0, 2, 4, 8, 12, 24])
    >>> r = nca(t, 10 * np.exp(-0.1 * t), dose=100.0)
    >>> round(r.lambda_z, 12), round(r.auc_inf, 9), r.lambda_z_n_points
    (0.1, 100.0, 5)
    >>> round(r.clearance, 9)
    1.0
    """
    t_abs, c = _check_profile(times, conc)
    if method not in METHODS:
        raise NCAError(f"method={method!r} is not an AUC method; use one of {list(METHODS)}")
    try:
        t0 = float(dose_time)
    except (TypeError, ValueError):
        raise NCAError(f"dose_time={dose_time!r} is not a number; pass the dose time in h") from None
    if not math.isfinite(t0):
        raise NCAError(f"dose_time={dose_time!r} must be finite (h)")
    if t_abs[0] < t0:
        raise NCAError(
            f"times[0] = {t_abs[0]:g} h is before dose_time = {t0:g} h; NCA covers one profile after a "
            "dose: drop the pre-dose samples or set dose_time to the dose of this profile"
        )
    dose_value = math.nan if dose is None else _check_positive("dose", dose, "mg")
    tau_value = math.nan if tau is None else _check_positive("tau", tau, "h")
    n_fixed: int | None = None
    if lambda_z_points is not None:
        if (
            isinstance(lambda_z_points, bool)
            or not isinstance(lambda_z_points, int | np.integer)
            or lambda_z_points < MIN_LAMBDA_Z_POINTS
        ):
            raise NCAError(
                f"lambda_z_points={lambda_z_points!r} must be an integer >= {MIN_LAMBDA_Z_POINTS}; "
                "or leave it None for the best-fit selection"
            )
        n_fixed = int(lambda_z_points)

    t = t_abs - t0
    notes: list[str] = []
    if t[0] > 0:
        notes.append(f"AUC starts at the first sample, {t[0]:g} h after the dose")

    i_max = int(np.argmax(c))  # first occurrence of the maximum
    cmax = float(c[i_max])
    positive = np.flatnonzero(c > 0)
    if positive.size == 0:
        notes.append("all concentrations are 0: tmax, tlast and λz are undefined")
        tmax, tlast, clast, i_last = math.nan, math.nan, 0.0, 0
    else:
        tmax = float(t[i_max])
        i_last = int(positive[-1])
        tlast, clast = float(t[i_last]), float(c[i_last])
    areas = _segment_areas(t, c, method)
    auc_last = float(np.sum(areas[:i_last]))

    if positive.size == 0:
        lz = _LambdaZ(reason="all concentrations are 0")
    else:
        lz = _lambda_z(t, c, i_max, n_fixed)
    lam = lz.lambda_z
    if lz.reason:
        notes.append(f"λz not estimated: {lz.reason}")
    auc_inf = auc_last + clast / lam if math.isfinite(lam) else math.nan
    pct_extrap = 100.0 * (clast / lam) / auc_inf if math.isfinite(auc_inf) and auc_inf > 0 else math.nan

    auc_tau = cavg = math.nan
    if math.isnan(tau_value):
        cmin = float(c.min())
    else:
        cmin = float(c[t <= tau_value].min()) if t[0] <= tau_value else math.nan
        if t[0] > 0:
            notes.append(
                "auc_tau is NaN: no sample at the dose time; add the pre-dose (trough) concentration "
                "at dose_time"
            )
        elif positive.size == 0:
            auc_tau = 0.0
        elif tau_value <= tlast:
            auc_tau = _auc_to(t, c, tau_value, method)
        elif math.isfinite(lam):
            auc_tau = auc_last + clast / lam * -math.expm1(-lam * (tau_value - tlast))
            notes.append(f"auc_tau extrapolated with λz from tlast = {tlast:g} h to tau = {tau_value:g} h")
        else:
            notes.append(f"auc_tau is NaN: tau = {tau_value:g} h is after tlast = {tlast:g} h and λz is NaN")
        cavg = auc_tau / tau_value

    if math.isnan(dose_value):
        clearance = math.nan
    else:
        clearance = dose_value / (auc_inf if math.isnan(tau_value) else auc_tau)

    return NCAResult(
        cmax=cmax,
        tmax=tmax,
        cmin=cmin,
        clast=clast,
        tlast=tlast,
        auc_last=auc_last,
        auc_tau=auc_tau,
        auc_inf=auc_inf,
        auc_inf_pct_extrap=pct_extrap,
        lambda_z=lam,
        lambda_z_n_points=lz.n_points,
        lambda_z_r2=lz.r2,
        lambda_z_r2_adj=lz.r2_adj,
        lambda_z_interval=lz.interval,
        lambda_z_reason=lz.reason,
        half_life=math.log(2.0) / lam,
        cavg=cavg,
        clearance=clearance,
        method=method,
        dose=dose_value,
        tau=tau_value,
        notes=tuple(notes),
    )


def nca_table(
    frame: pd.DataFrame,
    *,
    id_col: str = "ID",
    time_col: str = "TIME",
    conc_col: str = "DV",
    group_cols: Sequence[str] = (),
    dose_col: str | None = None,
    tau: float | None = None,
    method: str = "linear-up/log-down",
) -> pd.DataFrame:
    """NCA of every profile in a long table: one row per (`id_col`, *`group_cols`*).

    Rows are sorted by time within each profile (stable sort; the input is not modified).  Times
    are time after the profile's dose (h).

    Parameters
    ----------
    frame : pandas.DataFrame
        One row per sample.
    id_col, time_col, conc_col : str
        Subject, time (h) and concentration columns.
    group_cols : sequence of str
        Further columns that split a subject into profiles (e.g. period, analyte).
    dose_col : str, optional
        Dose (mg) of each profile.  Rows with a missing dose are ignored for it; the other rows of
        a profile must all carry the same positive dose.
    tau : float, optional
        Dosing interval (h) applied to every profile (see :func:`nca`).
    method : {"linear-up/log-down", "linear"}
        AUC method.

    Returns
    -------
    pandas.DataFrame
        Key columns then the keys of :meth:`NCAResult.to_dict`, one row per profile.

    Raises
    ------
    NCAError
        Missing columns, missing keys/times/concentrations (naming the row label), inconsistent
        doses within a profile, or any error of :func:`nca` (prefixed by the profile).

    Examples
    --------
    >>> df = pd.DataFrame({"ID": [1, 1, 1, 1, 2, 2, 2, 2], "TIME": [0, 1, 2, 4] * 2,
    ...                    "DV": [0, 8, 4, 1, 0, 6, 3, 0.75], "AMT": 10.0})
    >>> out = nca_table(df, dose_col="AMT")  # AUClast of ID 1: 8/2 + 4/ln 2 + 6/ln 4 = 4 + 7/ln 2
    >>> out[["ID", "cmax", "auc_last"]].round(4).to_string(index=False)
    ' ID  cmax  auc_last\\n  1   8.0   14.0989\\n  2   6.0   10.5741'
    """
    if method not in METHODS:
        raise NCAError(f"method={method!r} is not an AUC method; use one of {list(METHODS)}")
    keys = [id_col, *group_cols]
    needed = [*keys, time_col, conc_col, *([dose_col] if dose_col is not None else [])]
    missing = [col for col in needed if col not in frame.columns]
    if missing:
        raise NCAError(
            f"column(s) {missing} not in the frame (columns: {list(frame.columns)}); "
            "name the profile, time, concentration and dose columns with id_col=, group_cols=, "
            "time_col=, conc_col=, dose_col="
        )
    if len(frame) == 0:
        raise NCAError("the frame has no rows; pass one row per sample")
    for col in [*keys, time_col, conc_col]:
        na = frame[col].isna().to_numpy()
        if na.any():
            label = frame.index[int(np.flatnonzero(na)[0])]
            fix = "enter BLQ concentrations as 0 or drop the rows" if col == conc_col else "fill or drop"
            raise NCAError(
                f"row {_plain(label)!r}: column {col!r} is missing ({int(na.sum())} in total); {fix}"
            )
    rows = []
    for key, group in frame.groupby(keys, sort=True):
        key_values = key if isinstance(key, tuple) else (key,)
        where = ", ".join(f"{k}={_plain(v)!r}" for k, v in zip(keys, key_values, strict=True))
        dose = None
        if dose_col is not None:
            doses = group[dose_col].dropna().unique()
            if doses.size == 0:
                raise NCAError(
                    f"profile {where}: column {dose_col!r} is empty for every row; enter the dose (mg) "
                    "or pass dose_col=None"
                )
            if doses.size != 1:
                raise NCAError(
                    f"profile {where}: column {dose_col!r} holds {doses.size} distinct doses "
                    f"({doses.tolist()[:5]}); each profile needs one dose: split it with group_cols"
                )
            dose = doses[0]
        group = group.sort_values(time_col, kind="stable")
        try:
            result = nca(
                group[time_col].to_numpy(), group[conc_col].to_numpy(), dose=dose, tau=tau, method=method
            )
        except NCAError as err:
            raise NCAError(f"profile {where} (rows sorted by time): {err}") from None
        rows.append({**dict(zip(keys, key_values, strict=True)), **result.to_dict()})
    return pd.DataFrame(rows)


def accumulation_ratio(auc_tau_ss: Any, auc_tau_first: Any) -> Any:
    """Observed accumulation ratio ``AUCτ,ss / AUCτ,first dose``.

    Parameters
    ----------
    auc_tau_ss, auc_tau_first : float or array_like (broadcastable)
        AUC over one dosing interval at steady state and after the first dose (same units).

    Returns
    -------
    float or numpy.ndarray
        The ratio (dimensionless), a float for scalar inputs.

    Raises
    ------
    NCAError
        A value is not finite and positive.

    Examples
    --------
    >>> accumulation_ratio(150.0, 100.0)
    1.5
    """
    ss = _positive_array("auc_tau_ss", auc_tau_ss)
    first = _positive_array("auc_tau_first", auc_tau_first)
    ratio = ss / first
    return float(ratio) if ratio.ndim == 0 else ratio


def accumulation_ratio_from_lambda(lambda_z: Any, tau: Any) -> Any:
    """Predicted accumulation ratio ``1 / (1 - exp(-λz τ))`` of a mono-exponential decline.

    This is ``AUCτ,ss / AUCτ,1`` (and ``Cmin,ss / Cmin,1``) for linear kinetics with one
    exponential phase.

    Parameters
    ----------
    lambda_z : float or array_like
        Terminal rate constant (1/h), positive.
    tau : float or array_like
        Dosing interval (h), positive.

    Returns
    -------
    float or numpy.ndarray
        The ratio (>= 1), a float for scalar inputs.

    Raises
    ------
    NCAError
        A value is not finite and positive.

    Examples
    --------
    >>> round(accumulation_ratio_from_lambda(0.1, 10.0 * 0.6931471805599453), 12)  # tau = half-life
    2.0
    """
    lam = _positive_array("lambda_z", lambda_z)
    interval = _positive_array("tau", tau)
    ratio = -1.0 / np.expm1(-lam * interval)
    return float(ratio) if ratio.ndim == 0 else ratio


def _positive_array(name: str, value: Any) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise NCAError(f"{name}={_plain(value)!r} is not numeric; pass positive numbers") from None
    bad = ~(np.isfinite(arr) & (arr > 0))
    if np.any(bad):
        first = arr[tuple(np.argwhere(bad)[0])] if arr.ndim else arr
        raise NCAError(f"{name} must be finite and positive, got {float(first)!r}; check the input")
    return arr
