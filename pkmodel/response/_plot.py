"""The standard exposure–response plot (matplotlib imported lazily)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from pkmodel.errors import EstimationError

from ._logistic import LogisticFit, _check_frame_columns
from ._proportions import incidence_by_quantile

__all__ = ["plot_exposure_response"]


def plot_exposure_response(
    fit: LogisticFit,
    frame: pd.DataFrame,
    metric: str,
    response: str,
    *,
    regimen_col: str | None = None,
    ax: Any = None,
    n_bins: int = 4,
    level: float | None = None,
    band: str | None = None,
    n_points: int = 101,
    xlabel: str | None = None,
    ylabel: str | None = None,
) -> Any:
    """Draw the standard logistic exposure–response plot on one axes.

    Contents: the fitted probability with its pointwise confidence band (:meth:`LogisticFit.predict`,
    method `band`, default the fit's ``ci``); the observed proportion in each exposure quantile group
    (:func:`incidence_by_quantile`) with Clopper–Pearson intervals, drawn at the group's median
    exposure; the individual responses as ticks at 0 and 1; and below the probability axis
    (negative y) the exposure distribution per regimen as horizontal boxplots with the individual
    values (one strip per level of `regimen_col`, or one strip "all" without it).  The x axis is
    logarithmic when the fit used ``transform="log"``.

    Parameters
    ----------
    fit : LogisticFit
        The fitted model (status ``"ok"``) of `response` on `metric`.
    frame : pandas.DataFrame
        One row per subject with `metric`, `response` (and `regimen_col`).
    metric, response : str
        Exposure and 0/1 response columns.
    regimen_col : str, optional
        Column labelling each subject's regimen (or dose group).
    ax : matplotlib.axes.Axes, optional
        Axes to draw on; default a new 6.4 × 4.8 in figure.
    n_bins : int
        Exposure quantile groups (4: quartiles).
    level : float, optional
        Level of the band and of the observed-proportion intervals; default ``fit.level``.
    band : {"profile", "wald", "bootstrap"}, optional
        Band method; default ``fit.ci``.
    n_points : int
        Points of the fitted curve.
    xlabel, ylabel : str, optional
        Axis labels; default the column names.

    Returns
    -------
    matplotlib.axes.Axes

    Raises
    ------
    EstimationError
        Missing columns or values, a separated fit, or a frame whose exposures the fit cannot take.
    """
    import matplotlib.pyplot as plt

    if not isinstance(fit, LogisticFit):
        raise EstimationError(f"fit must be a LogisticFit from fit_logistic, got {type(fit).__name__}")
    fit._require_ok()
    columns = [metric, response] + ([regimen_col] if regimen_col is not None else [])
    _check_frame_columns(frame, columns, "plot_exposure_response")
    level = fit.level if level is None else level
    x = frame[metric].to_numpy(dtype=float)
    y = frame[response].to_numpy(dtype=float)
    log_scale = fit.transform == "log"
    if log_scale and np.any(x <= 0):
        raise EstimationError(
            f"column {metric!r} has non-positive exposures but the fit is on the log scale; plot the "
            "exposures that were fitted"
        )
    lo_x, hi_x = float(x.min()), float(x.max())
    grid = np.geomspace(lo_x, hi_x, n_points) if log_scale else np.linspace(lo_x, hi_x, n_points)
    curve = fit.predict(grid, level=level, method=band)
    observed = incidence_by_quantile(frame, metric, response, n_bins=n_bins, level=level)

    if ax is None:
        _, ax = plt.subplots(figsize=(6.4, 4.8))
    method = band or fit.ci
    ax.fill_between(
        curve["x"], curve["lower"], curve["upper"], color="C0", alpha=0.25, lw=0,
        label=f"{level:.0%} CI ({method})",
    )  # fmt: skip
    ax.plot(curve["x"], curve["p"], color="C0", lw=2, label="logistic fit")
    ok = observed["n"] > 0
    obs = observed[ok]
    ax.errorbar(
        obs["exposure_median"],
        obs["proportion"],
        yerr=[obs["proportion"] - obs["lower"], obs["upper"] - obs["proportion"]],
        fmt="o",
        color="k",
        capsize=3,
        label=f"observed by {n_bins}-quantile ({level:.0%} exact CI)",
    )
    for _, row in obs.iterrows():
        ax.annotate(
            f"{int(row['events'])}/{int(row['n'])}",
            (row["exposure_median"], row["upper"]),
            textcoords="offset points",
            xytext=(0, 4),
            ha="center",
            fontsize=8,
        )
    ax.plot(x, y, "|", color="0.4", ms=8, label="individual response (0/1)")

    # exposure distribution strip(s) below the probability axis
    if regimen_col is not None:
        labels = list(pd.unique(frame[regimen_col]))
        groups = [x[(frame[regimen_col] == g).to_numpy()] for g in labels]
    else:
        labels, groups = ["all"], [x]
    height = 0.12
    positions = [-0.1 - height * (k + 0.5) for k in range(len(labels))]
    import matplotlib

    major, minor = (int(v) for v in matplotlib.__version__.split(".")[:2])
    horizontal = {"orientation": "horizontal"} if (major, minor) >= (3, 10) else {"vert": False}
    ax.boxplot(
        groups,
        positions=positions,
        **horizontal,
        widths=height * 0.6,
        manage_ticks=False,
        showfliers=False,
    )
    rng = np.random.default_rng(0)  # fixed jitter: the figure is reproducible
    for pos, values in zip(positions, groups, strict=True):
        ax.plot(
            values, pos + rng.uniform(-0.25, 0.25, values.size) * height, ".", color="0.3", ms=3, alpha=0.6
        )
    ax.axhline(-0.05, color="0.7", lw=0.8)
    ax.set_yticks([*positions, 0.0, 0.25, 0.5, 0.75, 1.0])
    ax.set_yticklabels([str(v) for v in labels] + ["0", "0.25", "0.5", "0.75", "1"])
    ax.set_ylim(positions[-1] - height, 1.1)
    if log_scale:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel or metric)
    ax.set_ylabel(ylabel or f"P({response})")
    ax.legend(loc="center right", fontsize=8, frameon=False)
    return ax
