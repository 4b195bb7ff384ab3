"""Exact binomial (Clopper–Pearson) intervals and observed incidence by exposure quantile."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from pkmodel.errors import EstimationError

from ._logistic import _check_frame_columns, _check_level, _response_vector

__all__ = ["clopper_pearson", "incidence_by_quantile"]


def clopper_pearson(events: Any, n: Any, level: float = 0.95) -> tuple[Any, Any]:
    r"""Exact (Clopper–Pearson) confidence interval of a binomial proportion.

    .. math::

        p_L = B^{-1}\!\left(\tfrac{\alpha}{2};\, k,\, n-k+1\right), \qquad
        p_U = B^{-1}\!\left(1-\tfrac{\alpha}{2};\, k+1,\, n-k\right), \qquad \alpha = 1 - \text{level}

    with ``p_L = 0`` when ``k = 0`` and ``p_U = 1`` when ``k = n`` (``B⁻¹`` the beta quantile).

    Parameters
    ----------
    events : int or array_like of int
        Number of events k, ``0 <= k <= n``.
    n : int or array_like of int
        Number of trials, >= 1 (broadcast against `events`).
    level : float
        Confidence level, in (0, 1).

    Returns
    -------
    (lower, upper) : floats, or ndarrays of the broadcast shape

    Raises
    ------
    EstimationError
        Non-integer counts, ``n < 1`` or ``k`` outside ``[0, n]``.

    References
    ----------
    Clopper CJ, Pearson ES. The use of confidence or fiducial limits illustrated in the case of the
    binomial. Biometrika 1934;26:404-413. doi:10.1093/biomet/26.4.404

    Examples
    --------
    >>> lo, hi = clopper_pearson(0, 10, level=0.95)
    >>> float(lo), round(float(hi), 6), round(1 - 0.025 ** (1 / 10), 6)  # k = 0: 1 - (alpha/2)^(1/n)
    (0.0, 0.308497, 0.308497)
    """
    level = _check_level(level)
    k_arr = np.asarray(events)
    n_arr = np.asarray(n)
    for name, arr in (("events", k_arr), ("n", n_arr)):
        try:
            values = arr.astype(float)
        except (TypeError, ValueError):
            raise EstimationError(f"{name}={arr!r} must be whole numbers") from None
        if not np.all(np.isfinite(values)) or not np.all(values == np.round(values)):
            raise EstimationError(f"{name}={arr.tolist()!r} must be whole numbers (counts)")
    k = k_arr.astype(float)
    m = n_arr.astype(float)
    k, m = np.broadcast_arrays(k, m)
    if np.any(m < 1):
        raise EstimationError(f"n={n_arr.tolist()!r} must be >= 1 (number of subjects)")
    if np.any((k < 0) | (k > m)):
        raise EstimationError(f"events={k_arr.tolist()!r} must lie between 0 and n={n_arr.tolist()!r}")
    alpha = 1.0 - level
    with np.errstate(invalid="ignore", divide="ignore"):
        lower = np.where(k > 0, stats.beta.ppf(alpha / 2.0, np.maximum(k, 1), m - k + 1), 0.0)
        upper = np.where(k < m, stats.beta.ppf(1.0 - alpha / 2.0, k + 1, np.maximum(m - k, 1)), 1.0)
    if lower.ndim == 0:
        return float(lower), float(upper)
    return lower, upper


def incidence_by_quantile(
    frame: pd.DataFrame,
    metric: str,
    response: str,
    *,
    n_bins: int = 4,
    level: float = 0.95,
) -> pd.DataFrame:
    """Observed response proportion by exposure quantile group, with Clopper–Pearson intervals.

    Groups are cut at the sample quantiles ``numpy.quantile(x, k/n_bins)`` (linear interpolation,
    as pandas ``qcut``): group 1 is ``[q0, q1]``, group ``k > 1`` is ``(q_{k-1}, q_k]``.  Tied
    exposures at a cut are an error rather than a silently merged group.

    Parameters
    ----------
    frame : pandas.DataFrame
        One row per subject.
    metric : str
        Exposure column.
    response : str
        0/1 response column.
    n_bins : int
        Number of groups (4: quartiles), >= 1 and <= number of subjects.
    level : float
        Confidence level of the exact intervals.

    Returns
    -------
    pandas.DataFrame
        One row per group: ``bin`` (1-based), ``exposure_lower``, ``exposure_upper`` (cut points),
        ``exposure_median`` (median exposure of the group's subjects; where the plot draws the point),
        ``n``, ``events``, ``proportion``, ``lower``, ``upper``.

    Raises
    ------
    EstimationError
        Missing columns or values, a non-binary response, bad `n_bins`, or tied cut points.

    Examples
    --------
    >>> df = pd.DataFrame({"cavg": [1, 2, 3, 4, 5, 6, 7, 8], "g3": [0, 0, 0, 1, 0, 1, 1, 1]})
    >>> incidence_by_quantile(df, "cavg", "g3", n_bins=2)[["bin", "n", "events", "proportion"]]
       bin  n  events  proportion
    0    1  4       1        0.25
    1    2  4       3        0.75
    """
    _check_frame_columns(frame, [metric, response], "incidence_by_quantile")
    level = _check_level(level)
    try:
        x = frame[metric].to_numpy(dtype=float)
    except (TypeError, ValueError):
        raise EstimationError(f"column {metric!r} must be numeric exposures") from None
    y = _response_vector(frame[response].to_numpy(), x.size)
    if isinstance(n_bins, bool) or not isinstance(n_bins, int | np.integer) or not 1 <= n_bins <= x.size:
        raise EstimationError(
            f"n_bins={n_bins!r} must be a whole number from 1 to the number of subjects ({x.size}), e.g. 4"
        )
    edges = np.quantile(x, np.linspace(0.0, 1.0, n_bins + 1))
    tied = np.flatnonzero(np.diff(edges) <= 0)
    if tied.size:
        raise EstimationError(
            f"exposure column {metric!r} has tied quantile cut points ({float(edges[tied[0] + 1]):g} twice): "
            f"{n_bins} groups cannot be formed; use fewer groups (n_bins={max(n_bins - 1, 1)})"
        )
    group = np.searchsorted(edges[1:-1], x, side="left")  # (q_{k-1}, q_k]; the minimum falls in group 0
    rows = []
    for g in range(n_bins):
        members = group == g
        count, events = int(members.sum()), int(y[members].sum())
        lo, hi = clopper_pearson(events, count, level) if count else (np.nan, np.nan)
        rows.append(
            {
                "bin": g + 1,
                "exposure_lower": float(edges[g]),
                "exposure_upper": float(edges[g + 1]),
                "exposure_median": float(np.median(x[members])) if count else np.nan,
                "n": count,
                "events": events,
                "proportion": events / count if count else np.nan,
                "lower": lo,
                "upper": hi,
            }
        )
    return pd.DataFrame(rows)
