"""Shared fixtures of the estimation tests: the theophylline problem of R nlme's fm2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pkmodel.estimation import (
    IndividualParameter,
    OmegaBlock,
    PopulationProblem,
    ResidualError,
    Subject,
    Theta,
)

THEOPH_CSV = Path(__file__).resolve().parents[1] / "data" / "theoph" / "Theoph.csv"


def theoph_concentration(dose: float, time: np.ndarray, ke, ka, cl) -> np.ndarray:
    """R's SSfol in natural parameters: Dose·ke·ka/(cl·(ka − ke))·(exp(−ke t) − exp(−ka t)).

    ``exp(lKe + lKa − lCl) = ke·ka/cl`` and ``exp(lKa) − exp(lKe) = ka − ke``; parameters may be arrays
    of shape (k, 1) to evaluate k parameter sets at once.
    """
    return dose * ke * ka / (cl * (ka - ke)) * (np.exp(-ke * time) - np.exp(-ka * time))


def theoph_subjects() -> list[Subject]:
    """The 12 subjects of R's Theoph table; ``data`` holds the dose (mg/kg)."""
    table = pd.read_csv(THEOPH_CSV)
    subjects = []
    for subject_id, rows in table.groupby("Subject", sort=False):
        dose = float(rows["Dose"].iloc[0])
        subjects.append(
            Subject(
                int(subject_id),
                dv=rows["conc"].to_numpy(),
                time=rows["Time"].to_numpy(),
                covariates={"WT": float(rows["Wt"].iloc[0])},
                data=dose,
            )
        )
    return subjects


def theoph_predict_batch(subject: Subject, params: dict[str, np.ndarray]) -> np.ndarray:
    """Batched prediction, shape (k, n_obs)."""
    return theoph_concentration(
        subject.data,
        subject.time[None, :],
        params["KE"][:, None],
        params["KA"][:, None],
        params["CL"][:, None],
    )


def theoph_problem(subjects: list[Subject] | None = None) -> PopulationProblem:
    """nlme fm2 as a FOCE problem: η on log KA and log CL (log-normal KA, CL), additive error.

    Initial values are nlme's start (lKe −2.4, lKa 0.45, lCl −3.2); Ω and σ start from round values.
    """
    return PopulationProblem(
        subjects if subjects is not None else theoph_subjects(),
        thetas=[
            Theta("KE", float(np.exp(-2.4)), lower=0.0),
            Theta("KA", float(np.exp(0.45)), lower=0.0),
            Theta("CL", float(np.exp(-3.2)), lower=0.0),
        ],
        parameters=[
            IndividualParameter("KE", theta="KE"),
            IndividualParameter("KA", theta="KA", eta="eta_KA"),
            IndividualParameter("CL", theta="CL", eta="eta_CL"),
        ],
        omega=[OmegaBlock(["eta_KA", "eta_CL"], [0.5, 0.05])],
        residual=[ResidualError("additive", additive=0.7, name="conc")],
        predict_batch=theoph_predict_batch,
    )


@pytest.fixture(scope="session")
def theoph_foce_fit():
    """FOCE-I fit of the theophylline problem (about half a second)."""
    from pkmodel.estimation import fit_population

    return fit_population(theoph_problem(), method="foce-i")


@pytest.fixture(scope="session")
def theoph():
    """The helpers above, for tests that build variants of the problem."""
    from types import SimpleNamespace

    return SimpleNamespace(
        subjects=theoph_subjects,
        problem=theoph_problem,
        concentration=theoph_concentration,
        predict_batch=theoph_predict_batch,
    )
