"""Sections and figures of the regimen-comparison report (imported only when a report is written)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .report import Figure, Section, Table


def _profiles_figure(profiles: pd.DataFrame, analytes: list[str]):
    fig, axes = plt.subplots(1, len(analytes), figsize=(5 * len(analytes), 3.8), squeeze=False)
    for ax, analyte in zip(axes[0], analytes, strict=True):
        sub = profiles[profiles["analyte"] == analyte]
        for label, block in sub.groupby("regimen", sort=False):
            days = block["TIME"].to_numpy() / 24.0
            line = ax.plot(days, block["median"], label=label)[0]
            ax.fill_between(
                days, np.maximum(block["P5"], 1e-12), block["P95"], color=line.get_color(), alpha=0.2
            )
        positive = sub.loc[sub["TIME"] > 0, "P5"]
        positive = positive[positive > 0]
        ax.set_yscale("log")
        if len(positive):
            ax.set_ylim(bottom=float(positive.min()) / 2)
        ax.set_title(f"{analyte} ({sub['unit'].iloc[0]})")
        ax.set_xlabel("time, days")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Median and 90 % prediction interval")
    fig.tight_layout()
    return fig


def _anc_figure(anc: pd.DataFrame):
    fig, ax = plt.subplots(figsize=(8, 4))
    for label, block in anc.groupby("regimen", sort=False):
        days = block["TIME"].to_numpy() / 24.0
        line = ax.plot(days, block["median"], label=label)[0]
        ax.fill_between(days, block["P5"], block["P95"], color=line.get_color(), alpha=0.15)
    for level, name in ((1.0, "grade 3"), (0.5, "grade 4")):
        ax.axhline(level, color="grey", ls="--", lw=0.8)
        ax.text(0.5, level * 1.05, name, color="grey", fontsize=8)
    ax.set_xlabel("time, days")
    ax.set_ylabel("ANC, 10^9/L")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _er_figure(comparison):
    from .response import plot_exposure_response

    tables = comparison.tables
    metric = str(tables["exposure_response_parameters"]["metric"].iloc[0])
    fig, ax = plt.subplots(figsize=(10, 6.5))
    plot_exposure_response(
        comparison.er_fit,
        tables["exposure_response_data"],
        metric,
        "grade3plus",
        regimen_col="regimen",
        ax=ax,
    )
    fig.tight_layout()
    return fig


def build_sections(comparison) -> list[Section]:
    """The report sections of a :class:`pkmodel.compare.Comparison`."""
    sc = comparison.scenario
    t = comparison.tables
    inc = t["neutropenia_incidence"]
    di = t["dose_intensity"]
    summary_lines = []
    for _, row in inc.iterrows():
        line = f"{row['regimen']}: predicted grade >=3 neutropenia {100 * row['incidence_ge3']:.1f} %"
        if "incidence_ge3_lower" in inc.columns:
            line += f" (90 % interval {100 * row['incidence_ge3_lower']:.1f}-{100 * row['incidence_ge3_upper']:.1f} %)"
        summary_lines.append(line + ".")
    summary_lines.append(
        f"{len(t['population'])} virtual subjects per regimen (the same subjects for every regimen), seed {sc.seed}; "
        f"PK model {sc.pk_model.name} (exact engine), PK/PD model {sc.pkpd_model.name} (hybrid engine: exact PK, the PD by an explicit Runge-Kutta method)."
    )
    sections = [
        Section(
            "Summary",
            summary_lines,
            [
                Table(
                    "neutropenia_incidence",
                    "Predicted neutropenia incidence",
                    inc,
                    caption="Worst CTCAE v5.0 grade on treatment; intervals are 90 % "
                    "Clopper-Pearson intervals of the simulated proportion",
                )
            ],
        ),
        Section(
            "Regimens and dose intensity",
            [],
            [
                Table(
                    "dose_intensity",
                    "Dose intensity",
                    di,
                    caption="Total dose per week over the treatment span",
                )
            ],
        ),
        Section(
            "Exposure",
            [
                "Cycle 1 and steady state (ss) exposure per regimen: median and 90 % interval "
                "(P5-P95) across virtual subjects. AUC in unit*h, AUC_week per week, Cavg = AUC/tau."
            ],
            [
                Table(
                    "exposure_summary",
                    "Exposure by regimen, analyte, cycle and metric",
                    t["exposure_summary"],
                ),
                Table("exposure_subjects", "Individual exposure metrics", t["exposure_subjects"], show=False),
                Table(
                    "population", "Virtual population (individual parameters)", t["population"], show=False
                ),
            ],
        ),
        Section(
            "Concentration-time profiles",
            [],
            [
                Figure(
                    "concentration_time",
                    "Total antibody, conjugated ADC and free SN-38",
                    _profiles_figure(t["profiles"], list(sc.analytes)),
                ),
                Table("profiles", "Profile percentiles", t["profiles"], show=False),
            ],
        ),
        Section(
            "Neutrophil counts",
            [],
            [
                Figure("anc", "ANC median and 90 % prediction interval", _anc_figure(t["anc_profiles"])),
                Table("anc_profiles", "ANC percentiles", t["anc_profiles"], show=False),
            ],
        ),
        Section(
            "Exposure-response for grade >=3 neutropenia",
            [
                "Logistic regression of grade >=3 neutropenia on cycle-1 exposure in the virtual population; the "
                "metric is chosen by likelihood among the candidates. Curve with 90 % confidence band (profile "
                "likelihood); observed proportions by exposure quartile with Clopper-Pearson intervals."
            ],
            [
                Table(
                    "exposure_response_selection",
                    "Candidate exposure metrics",
                    t["exposure_response_selection"],
                ),
                Table("exposure_response_parameters", "Logistic model", t["exposure_response_parameters"]),
                Figure("exposure_response", "Exposure-response", _er_figure(comparison)),
                Table("exposure_by_quartile", "Incidence by exposure quartile", t["exposure_by_quartile"]),
                Table(
                    "exposure_response_curve",
                    "Exposure-response curve",
                    t["exposure_response_curve"],
                    show=False,
                ),
                Table(
                    "exposure_response_data",
                    "Exposure-response data",
                    t["exposure_response_data"],
                    show=False,
                ),
            ],
        ),
    ]
    if "fit_estimates" in t:
        prov = comparison.provenance
        sections.insert(
            2,
            Section(
                "Population PK estimates used",
                [
                    f"Typical values and inter-individual variances of the PK parameters come from the population "
                    f"fit {prov.get('fit_spec', '')} (status: {prov.get('fit_status', '')}, OFV "
                    f"{prov.get('fit_ofv', float('nan')):.3f}); the other parameters are the model files' values "
                    "with the scenario's variability.",
                ],
                [
                    Table(
                        "fit_estimates",
                        "Population estimates (theta; omega as variances)",
                        t["fit_estimates"],
                    )
                ],
            ),
        )
    if "matched_dose_intensity" in t:
        sections.append(
            Section(
                "Comparison at matched dose intensity",
                [
                    "Each schedule dosed to the same mg/kg per week as its reference: differences left are due to the "
                    "schedule alone."
                ],
                [Table("matched_dose_intensity", "Matched dose intensity", t["matched_dose_intensity"])],
            )
        )
    sections.append(
        Section(
            "Methods and assumptions",
            [
                f"Scenario file: {sc.path}. Models: {sc.pk_model.file}; {sc.pkpd_model.file}.",
                "Exposure metrics come from the exact matrix-exponential solution of the linear PK model; neutrophil "
                "counts from the Friberg model driven by free SN-38 (hybrid engine: exact PK, the Friberg ODEs by DOP853), graded by CTCAE v5.0.",
                "Incidence intervals reflect Monte Carlo precision of the simulated proportion given the model, not "
                "parameter uncertainty or the sampling variation of a trial of a given size.",
            ],
        )
    )
    return sections
