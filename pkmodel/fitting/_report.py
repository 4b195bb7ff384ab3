"""Text tables and goodness-of-fit plots of a fit (matplotlib imported lazily, Agg canvas)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from pkmodel.estimation import IndividualResult, PopulationResult

__all__ = ["format_parameter_table", "write_gof_plots"]

_MAX_PANELS = 48  # subjects per individual-fits page


def _num(value: float, width: int = 11) -> str:
    if value is None or not math.isfinite(value):
        return "...".rjust(width)
    return f"{value: .4E}".rjust(width)


def _pct(value: float, width: int = 7) -> str:
    if value is None or not math.isfinite(value):
        return "...".rjust(width)
    return f"{value:.1f}".rjust(width)


def _population_table(r: PopulationResult, header: str) -> str:
    lines = [header] if header else []
    lines.append(
        f"OFV (NONMEM convention: -2 log L without the constant n*log(2*pi)) = {r.ofv:.4f}    "
        f"-2 log L (with the constant, n = {r.n_obs}) = {r.minus_2_log_likelihood:.4f}"
    )
    lines.append(
        f"{r.n_subjects} subjects, {r.n_obs + r.n_blq} observations ({r.n_blq} BLQ), "
        f"{r.n_parameters} estimated parameters; AIC {r.aic:.3f}, BIC {r.bic:.3f}"
    )
    cond = f"{r.condition_number:.3g}" if math.isfinite(r.condition_number) else "n/a"
    lines.append(
        f"converged: {r.converged}; covariance step: {r.covariance_message}; condition number {cond}"
    )
    lines.append("")
    lines.append(f"{'THETA':<18}{'ESTIMATE':>11}{'SE':>11}{'RSE%':>7}  {'95% CI':<25}{'':>1}")
    for k, (name, row) in enumerate(r.theta_table().iterrows(), start=1):
        if row["fixed"]:
            ci = "(fixed)"
        elif math.isfinite(row["se"]):
            ci = f"[{row['estimate'] - 1.96 * row['se']:.4g}, {row['estimate'] + 1.96 * row['se']:.4g}]"
        else:
            ci = ""
        lines.append(
            f"TH{k:<3}{name:<14}{_num(row['estimate'])}{_num(row['se'])}{_pct(row['rse_percent'])}  {ci}"
        )
    lines.append("")
    lines.append(f"{'OMEGA':<18}{'ESTIMATE':>11}{'SE':>11}{'RSE%':>7}  SD or correlation, shrinkage")
    index = {n: i for i, n in enumerate(r.eta_names, start=1)}
    for name, row in r.omega_table().iterrows():
        inner = name[len("omega(") : -1].split(",")
        label = "OM" + ",".join(str(index[e]) for e in (inner * 2 if len(inner) == 1 else inner))
        if len(inner) == 1:
            extra = f"SD {row['sd']:.4g} (CV {100 * math.sqrt(math.exp(row['estimate']) - 1):.1f}%), "
            extra += f"shrinkage {row['shrinkage_percent']:.1f}%"
        else:
            extra = f"correlation {row['correlation']:.3f}"
        if row["fixed"]:
            extra += " (fixed)"
        lines.append(
            f"{label:<9}{name[6:-1]:<9}{_num(row['estimate'])}{_num(row['se'])}{_pct(row['rse_percent'])}  {extra}"
        )
    lines.append("")
    lines.append(f"{'SIGMA (as SD)':<18}{'ESTIMATE':>11}{'SE':>11}{'RSE%':>7}  variance")
    for k, (name, row) in enumerate(r.sigma_table().iterrows(), start=1):
        fixed = " (fixed)" if row["fixed"] else ""
        lines.append(
            f"SG{k:<3}{name:<14}{_num(row['sd'])}{_num(row['se_sd'])}{_pct(row['rse_percent'])}  "
            f"{row['variance']:.4E}{fixed}"
        )
    return "\n".join(lines)


def _individual_table(results: dict[Any, IndividualResult], header: str) -> str:
    lines = [header] if header else []
    for sid, res in results.items():
        lines.append("")
        lines.append(
            f"ID {sid}: -2 log L {res.minus_2_log_likelihood:.4f} (with the constant), AIC {res.aic:.3f}, "
            f"converged {res.converged}, covariance {'ok' if res.covariance_ok else 'FAILED'}"
        )
        lines.append(f"  {'PARAMETER':<16}{'ESTIMATE':>11}{'SE':>11}{'RSE%':>7}")
        for name, row in res.parameter_table().iterrows():
            fixed = "  (fixed)" if row["fixed"] else ""
            lines.append(
                f"  {name:<16}{_num(row['estimate'])}{_num(row['se'])}{_pct(row['rse_percent'])}{fixed}"
            )
    return "\n".join(lines)


def format_parameter_table(result: Any) -> str:
    """A NONMEM-style table of the estimates: THETA, OMEGA, SIGMA with estimate, SE and RSE %.

    The first lines state the objective function value and its convention (NONMEM's OFV omits the
    constant ``n·log 2π``; ``−2 log L`` includes it), the status, then one line per parameter.

    Parameters
    ----------
    result : FitRun, PopulationResult, or dict of ID to IndividualResult
        A fit.  For individual fits, one block per subject.

    Returns
    -------
    str

    Examples
    --------
    >>> import numpy as np
    >>> from pkmodel.estimation import (IndividualParameter, OmegaBlock, PopulationProblem, ResidualError,
    ...                                 Subject, Theta, fit_population)
    >>> rng = np.random.default_rng(7)
    >>> subjects = [Subject(i, dv=3 + rng.normal(0, 1) + rng.normal(0, 0.5, 3)) for i in range(15)]
    >>> fit = fit_population(PopulationProblem(
    ...     subjects, [Theta("B", 2.0)],
    ...     [IndividualParameter("B", theta="B", eta="eta", eta_form="additive")],
    ...     [OmegaBlock(["eta"], [0.5])], [ResidualError("additive", additive=1.0)],
    ...     predict=lambda s, p: np.full(s.n_obs, p["B"])))
    >>> print(format_parameter_table(fit).splitlines()[0])  # doctest: +ELLIPSIS
    OFV (NONMEM convention: -2 log L without the constant n*log(2*pi)) = ...
    """
    from pkmodel.fitting._run import FitRun

    if isinstance(result, FitRun):
        spec = result.spec
        header = (
            f"pkmodel {spec.method.upper()} fit of {spec.name} (model {spec.model.name}, data "
            f"{spec.data_path.name})\nstatus: {result.status} — {result.status_message}"
        )
        for note in result.notes:
            header += f"\nnote: {note}"
        result = result.result
    else:
        header = ""
    if isinstance(result, PopulationResult):
        return _population_table(result, header)
    if isinstance(result, dict) and all(isinstance(v, IndividualResult) for v in result.values()):
        return _individual_table(result, header)
    raise TypeError(
        f"expected a FitRun, PopulationResult or dict of IndividualResult, got {type(result).__name__}"
    )


# --------------------------------------------------------------------------------------------- plots


def _figure(n_panels: int, width: float = 4.0, height: float = 3.4, columns: int | None = None):
    from matplotlib.figure import Figure

    ncol = columns or min(n_panels, 3)
    nrow = math.ceil(n_panels / ncol)
    fig = Figure(figsize=(width * ncol, height * nrow), layout="constrained")
    axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def _save(fig, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110)


def _log_scale(run, output: str) -> bool:
    model = next(r.model for r in run.spec.residual if r.output == output)
    return model != "additive"


def _scatter_identity(run, table, xcol: str, title: str, path: Path) -> None:
    outputs = list(run.fit_problem.outputs)
    fig, axes = _figure(len(outputs))
    for ax, output in zip(axes, outputs, strict=True):
        rows = table[(table["OUTPUT"] == output) & (table["BLQ"] == 0)]
        x, y = rows[xcol].to_numpy(float), rows["DV"].to_numpy(float)
        unit = run.spec.model.outputs[output].unit
        ax.scatter(x, y, s=12, alpha=0.6, color="C0")
        finite = np.concatenate([x[np.isfinite(x)], y[np.isfinite(y)]])
        if _log_scale(run, output):
            positive = finite[finite > 0]
            if positive.size:
                lo, hi = positive.min() / 1.5, positive.max() * 1.5
                ax.set_xscale("log")
                ax.set_yscale("log")
                ax.set_xlim(lo, hi)
                ax.set_ylim(lo, hi)
                ax.plot([lo, hi], [lo, hi], color="k", lw=1)
        elif finite.size:
            lo, hi = min(0.0, finite.min()), finite.max() * 1.05
            ax.plot([lo, hi], [lo, hi], color="k", lw=1)
        ax.set_xlabel(f"{xcol} ({unit})")
        ax.set_ylabel(f"DV ({unit})")
        ax.set_title(f"{output}: DV vs {xcol}")
    fig.suptitle(title)
    _save(fig, path)


def _residual_plot(run, table, xcol: str, path: Path) -> None:
    outputs = list(run.fit_problem.outputs)
    fig, axes = _figure(len(outputs))
    for ax, output in zip(axes, outputs, strict=True):
        rows = table[(table["OUTPUT"] == output) & (table["BLQ"] == 0)]
        x, y = rows[xcol].to_numpy(float), rows["CWRES"].to_numpy(float)
        ax.scatter(x, y, s=12, alpha=0.6, color="C0")
        ax.axhline(0.0, color="k", lw=1)
        for level in (-2.0, 2.0):
            ax.axhline(level, color="k", lw=0.7, ls="--")
        if xcol == "PRED" and _log_scale(run, output) and np.any(x > 0):
            ax.set_xscale("log")
        unit = "h" if xcol == "TIME" else run.spec.model.outputs[output].unit
        ax.set_xlabel(f"{xcol} ({unit})")
        ax.set_ylabel("CWRES")
        ax.set_title(f"{output}: CWRES vs {xcol}")
    _save(fig, path)


def _individual_fits(run, table, path_stem: Path) -> list[str]:
    fp = run.fit_problem
    subjects = list(fp.subjects)
    individual = run.model_parameters().set_index("ID")
    typical = run.typical_parameters().set_index("ID") if run.is_population else None
    names = [p.name for p in run.spec.parameters]
    written = []
    for output in fp.outputs:
        suffix = "" if len(fp.outputs) == 1 else f"_{output}"
        unit = run.spec.model.outputs[output].unit
        log = _log_scale(run, output)
        pages = [subjects[i : i + _MAX_PANELS] for i in range(0, len(subjects), _MAX_PANELS)]
        for page_no, page in enumerate(pages, start=1):
            fig, axes = _figure(len(page), width=2.6, height=2.2, columns=min(len(page), 6))
            for ax, s in zip(axes, page, strict=True):
                rows = table[(table["ID"] == s.id) & (table["OUTPUT"] == output)]
                if len(rows) == 0:
                    ax.set_title(f"ID {s.id} (no {output})", fontsize=8)
                    continue
                tmax = float(rows["TIME"].max())
                grid = np.linspace(0.0, tmax if tmax > 0 else 1.0, 241)
                params = {n: np.array([individual.loc[s.id, n]]) for n in names}
                if typical is not None:
                    params = {n: np.array([individual.loc[s.id, n], typical.loc[s.id, n]]) for n in names}
                curves = fp.simulate_subject(s, params, grid)[output]
                obs = rows[rows["BLQ"] == 0]
                blq = rows[rows["BLQ"] == 1]
                ax.plot(grid, curves[:, 0], color="C0", lw=1.2, label="IPRED")
                if curves.shape[1] > 1:
                    ax.plot(grid, curves[:, 1], color="C1", lw=1, ls="--", label="PRED")
                ax.scatter(obs["TIME"], obs["DV"], s=10, color="k", zorder=3, label="DV")
                if len(blq):
                    ax.scatter(
                        blq["TIME"],
                        blq["LLOQ"],
                        s=14,
                        marker="v",
                        facecolors="none",
                        edgecolors="r",
                        zorder=3,
                        label="BLQ (at LLOQ)",
                    )
                if log:
                    positive = np.concatenate([obs["DV"].to_numpy(float), blq["LLOQ"].to_numpy(float)])
                    positive = positive[positive > 0]
                    if positive.size:
                        ax.set_yscale("log")
                        ax.set_ylim(positive.min() / 3.0, positive.max() * 3.0)
                ax.set_title(f"ID {s.id}", fontsize=8)
                ax.tick_params(labelsize=7)
            axes[0].legend(fontsize=6)
            fig.supxlabel("time (h)")
            fig.supylabel(f"{output} ({unit})")
            name = f"{path_stem.name}{suffix}" + (f"_p{page_no}" if len(pages) > 1 else "") + ".png"
            _save(fig, path_stem.parent / name)
            written.append(name)
    return written


def write_gof_plots(run, folder: Path) -> list[str]:
    """Write the goodness-of-fit PNGs of a fit into ``folder``; returns the file names.

    Population fits: DV vs PRED, DV vs IPRED, CWRES vs TIME, CWRES vs PRED (one panel per output) and
    the individual fits (observations, IPRED and PRED curves; one page per output and 48 subjects).
    Individual fits: DV vs IPRED and the individual fits.
    """
    folder = Path(folder)
    table = run.predictions()
    written = []
    if run.is_population:
        _scatter_identity(run, table, "PRED", "population predictions", folder / "gof_dv_pred.png")
        written.append("gof_dv_pred.png")
    _scatter_identity(run, table, "IPRED", "individual predictions", folder / "gof_dv_ipred.png")
    written.append("gof_dv_ipred.png")
    if run.is_population:
        _residual_plot(run, table, "TIME", folder / "gof_cwres_time.png")
        _residual_plot(run, table, "PRED", folder / "gof_cwres_pred.png")
        written += ["gof_cwres_time.png", "gof_cwres_pred.png"]
    written += _individual_fits(run, table, folder / "individual_fits")
    return written
