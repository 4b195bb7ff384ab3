"""Generate the SIMULATED ESG401-like phase 1 dataset ``esg401_phase1.csv`` (not patient data).

The file mimics the design of the ESG401 first-in-human study (NCT04892342; Wang et al., Cell Rep Med
2024;5:101707; ASCO 2023): 35 patients, regimen A 2-20 mg/kg once every 3 weeks, regimen B 12-16 mg/kg
on days 1, 8 and 15 of 4-week cycles.  Every value in it is simulated from the assumed truth below:

* structural model ``models/adc_esg401_friberg.toml`` (DAR-resolved ESG401 PK, free SN-38 driving the
  Friberg neutropenia model) with its typical values, except those in :data:`TYPICAL` (median baseline
  ANC and SN-38 effect, calibrated);
* log-normal inter-individual variability :data:`OMEGA2` (variances of η; P_i = P·exp(η_i));
* covariates WT and ALB drawn from :data:`COVARIATES` (truncated distributions, drawn exactly by
  inverse CDF);
* white blood cells: WBC = ANC + a non-neutrophil part (lymphocytes, monocytes, ...)
  ``NONNEUT0_i·(ANC(t)/CIRC0_i)^BETA_NONNEUT`` (:data:`WBC_MODEL`; assumed);
* residual errors :data:`RESIDUAL` and assay limits :data:`LLOQ`.

Random numbers come from one generator ``numpy.random.default_rng(SEED)``, drawn in this order:
WT, ALB (one per patient), the η matrix (patients × :data:`OMEGA2` keys, row-major), then the
residual errors of the PK records, of the ANC records and of the non-neutrophil WBC part, each in
record order.  :data:`SEED` was fixed once (401, after the drug's name) before the first generation
and was never changed to improve the match.  The calibration of the assumptions (not of the seed)
is :func:`expected_incidence`: replicate trials of the same design with a separate seed.

Usage::

    python -m pkmodel.examples.make_esg401_phase1            # rewrite esg401_phase1.csv
    python -m pkmodel.examples.make_esg401_phase1 --out x.csv
    python -m pkmodel.examples.make_esg401_phase1 --calibrate 30   # expected incidences, 30 trials

Examples
--------
>>> sum(c.n for c in COHORTS), sorted({c.regimen for c in COHORTS})
(35, ['A', 'B'])
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import ndtr, ndtri

__all__ = [
    "COHORTS",
    "COVARIATES",
    "CYCLES",
    "LLN",
    "LLOQ",
    "MODEL",
    "OMEGA2",
    "RESIDUAL",
    "SEED",
    "TYPICAL",
    "WBC_MODEL",
    "Cohort",
    "expected_incidence",
    "generate",
    "main",
    "simulate_study",
    "write_dataset",
]

#: The fixed seed of the shipped file (chosen once, a priori).
SEED = 401
#: Seed of the calibration trials (independent of :data:`SEED`).
CALIBRATION_SEED = 20240905
#: Structural model (truth).
MODEL = "adc_esg401_friberg"
#: Infusion duration of every dose, h.
INFUSION_H = 1.0


@dataclass(frozen=True)
class Cohort:
    """One dose cohort: regimen ``"A"`` (Q3W) or ``"B"`` (D1,8,15 q4w), dose (mg/kg) and size."""

    regimen: str
    dose: float
    n: int


#: Allocation (assumed; the publication gives the dose range and 35 patients, not the cohort sizes):
#: 3 per escalation cohort, more at 16 mg/kg Q3W, 24 patients at the "therapeutically relevant" doses
#: (>= 16 mg/kg Q3W and regimen B), as in the efficacy analysis (11 TNBC + 13 HR+/HER2-).
COHORTS: tuple[Cohort, ...] = (
    Cohort("A", 2.0, 3),
    Cohort("A", 4.0, 3),
    Cohort("A", 8.0, 3),
    Cohort("A", 12.0, 3),
    Cohort("A", 16.0, 8),
    Cohort("A", 20.0, 4),
    Cohort("B", 12.0, 3),
    Cohort("B", 14.0, 3),
    Cohort("B", 16.0, 5),
)

#: Cycles given per regimen (no delays, reductions or early stops are simulated): 18 weeks of
#: Q3W (6 cycles) and 16 weeks of D1,8,15 q4w (4 cycles).
CYCLES = {"A": 6, "B": 4}
#: Cycle length (h) and dosing days (1-based) per regimen.
CYCLE_H = {"A": 504.0, "B": 672.0}
DOSING_DAYS = {"A": (1,), "B": (1, 8, 15)}

#: Covariate distributions (assumed): body weight log-normal with median 58 kg (a Chinese
#: breast-cancer population) and SD of log 0.16, truncated to [40, 95] kg; albumin normal, mean 40,
#: SD 4 g/L, truncated to [28, 50] g/L.  Values are rounded (WT 0.1 kg, ALB 1 g/L) and the rounded
#: values are the ones simulated.
COVARIATES = {
    "WT": {"dist": "lognormal", "median": 58.0, "sd_log": 0.16, "lower": 40.0, "upper": 95.0},
    "ALB": {"dist": "normal", "mean": 40.0, "sd": 4.0, "lower": 28.0, "upper": 50.0},
}

#: Typical values that differ from the model file (assumed; calibrated, see esg401_phase1.md):
#: CIRC0, the median baseline ANC (10^9/L; the model file's 5.0 is a placeholder for the patient's own
#: baseline), and SLOPE, the SN-38 effect (L/µmol; the model file's 4.291 was calibrated to 16 mg/kg Q3W
#: alone, 70 kg, baseline 5).  Every other typical value is the model file's.
TYPICAL = {"CIRC0": 3.6, "SLOPE": 3.6}

#: Variances of the log-normal random effects (assumed), P_i = P_typical·exp(η_i), Ω diagonal.
#: PK: moderate IIV typical of monoclonal antibodies and ADCs; SN-38 clearance 0.2 (about the
#: variance of log SN-38 exposure in Sathe 2024, 0.205).  PD: Friberg 2002 (paclitaxel) values for
#: CIRC0 (0.107), MTT (0.0296) and SLOPE (0.176).  NONNEUT0: the non-neutrophil part of the WBC.
OMEGA2 = {
    "CL": 0.0625,
    "V1": 0.04,
    "KDEC": 0.09,
    "CLS": 0.2,
    "CIRC0": 0.107,
    "MTT": 0.0296,
    "SLOPE": 0.176,
    "NONNEUT0": 0.09,
}

#: WBC = ANC + NONNEUT0·(ANC/CIRC0)^BETA (10^9/L): the non-neutrophil leukocytes (median 2.0 ×10^9/L
#: at baseline: lymphocytes, monocytes, eosinophils, basophils) fall with the neutrophils but less
#: (BETA < 1), as SN-38 suppresses lymphopoiesis less.  Assumed; BETA calibrated (esg401_phase1.md).
WBC_MODEL = {"NONNEUT0": 2.0, "BETA": 0.6}

#: Residual errors (assumed): PK y = f·(1 + ε_prop) + ε_add (SDs below, DV units; the additive SD is
#: LLOQ/5, so that a drug-free sample is BLQ); ANC and the non-neutrophil WBC part y = f·exp(ε).
RESIDUAL = {
    "TAb": {"proportional": 0.15, "additive": 0.1},
    "ADC": {"proportional": 0.15, "additive": 0.02},
    "SN38": {"proportional": 0.25, "additive": 0.1},
    "ANC": {"exponential": 0.15},
    "NONNEUT": {"exponential": 0.15},
}

#: Lower limits of quantification (assumed assay values): TAb and ADC µg/mL, SN-38 ng/mL.
LLOQ = {"TAb": 0.5, "ADC": 0.1, "SN38": 0.5}

#: Laboratory lower limits of normal (10^9/L) used for the grades (pkmodel.grading defaults).
LLN = {"ANC": 2.0, "WBC": 4.0}
#: CTCAE v5.0 boundaries (10^9/L) of grades 2, 3 and 4 (grade 1 starts below the LLN).
_CTCAE = {"ANC": (1.5, 1.0, 0.5), "WBC": (3.0, 2.0, 1.0)}

#: Published incidences (ESG401 phase 1, ASCO 2023; literature README section 6), % of patients.
PUBLISHED = {"neutropenia_any": 69.0, "neutropenia_ge3": 31.0, "leukopenia_any": 80.0, "leukopenia_ge3": 29.0}

PK_OUTPUTS = ("TAb", "ADC", "SN38")
_PK_DECIMALS = 4  # significant digits of PK values in the file


# ------------------------------------------------------------------------------------------ design


def dose_times(regimen: str) -> np.ndarray:
    """Start times (h) of every infusion of a regimen."""
    cycle = CYCLE_H[regimen]
    days = DOSING_DAYS[regimen]
    return np.array([k * cycle + (d - 1) * 24.0 for k in range(CYCLES[regimen]) for d in days])


def pk_times(regimen: str) -> np.ndarray:
    """Nominal PK sampling times (h after the first dose) of a regimen.

    Cycle 1 rich: pre-dose, end of infusion (1 h), 2, 4, 8, 24, 48, 72 h, then day 8 and 15 (pre-dose
    and end of infusion on dosing days) and day 22 of regimen B; later cycles: pre-dose (trough) and end
    of infusion on day 1; end of treatment one cycle after the last cycle start.
    """
    cycle = CYCLE_H[regimen]
    first = [0.0, 1.0, 2.0, 4.0, 8.0, 24.0, 48.0, 72.0, 168.0, 336.0]
    if regimen == "B":
        first += [169.0, 337.0, 504.0]
    later = [k * cycle + dt for k in range(1, CYCLES[regimen]) for dt in (0.0, 1.0)]
    end = [CYCLES[regimen] * cycle]
    return np.array(sorted(first + later + end))


def hematology_times(regimen: str) -> np.ndarray:
    """Nominal ANC/WBC sampling times (h): weekly from day 1 (pre-dose), day 11 in cycle 1 of regimen A
    (near the expected nadir), and end of treatment."""
    cycle = CYCLE_H[regimen]
    weeks = int(cycle // 168)
    times = [k * cycle + 168.0 * w for k in range(CYCLES[regimen]) for w in range(weeks)]
    if regimen == "A":
        times.append(240.0)
    times.append(CYCLES[regimen] * cycle)
    return np.array(sorted(set(times)))


def design(replicates: int = 1) -> pd.DataFrame:
    """Patients of ``replicates`` copies of the design: ID, REP, REGIMEN, DOSE (mg/kg)."""
    rows = []
    pid = 0
    for rep in range(1, replicates + 1):
        for cohort in COHORTS:
            for _ in range(cohort.n):
                pid += 1
                rows.append({"ID": pid, "REP": rep, "REGIMEN": cohort.regimen, "DOSE": cohort.dose})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------- the draws


def _truncated(rng: np.random.Generator, n: int, spec: dict) -> np.ndarray:
    """Exact draws from a truncated normal or log-normal by inverse CDF (one uniform per value)."""
    if spec["dist"] == "lognormal":
        loc, scale = np.log(spec["median"]), spec["sd_log"]
        lo, hi = np.log(spec["lower"]), np.log(spec["upper"])
    else:
        loc, scale = spec["mean"], spec["sd"]
        lo, hi = spec["lower"], spec["upper"]
    u = rng.uniform(ndtr((lo - loc) / scale), ndtr((hi - loc) / scale), n)
    x = loc + scale * ndtri(u)
    return np.exp(x) if spec["dist"] == "lognormal" else x


def _patients(rng: np.random.Generator, table: pd.DataFrame, model) -> pd.DataFrame:
    n = len(table)
    out = table.copy()
    out["WT"] = np.round(_truncated(rng, n, COVARIATES["WT"]), 1)
    out["ALB"] = np.round(_truncated(rng, n, COVARIATES["ALB"]), 0)
    names = list(OMEGA2)
    eta = rng.standard_normal((n, len(names))) * np.sqrt([OMEGA2[k] for k in names])
    typical = {k: model.parameters[k].value for k in names if k in model.parameters}
    typical.update(TYPICAL)
    typical["NONNEUT0"] = WBC_MODEL["NONNEUT0"]
    for j, name in enumerate(names):
        out[name] = typical[name] * np.exp(eta[:, j])
    return out


def _regimen(regimen: str, amount_mg: float):
    from pkmodel.dosing import Infusion, Regimen

    return Regimen(
        [Infusion(float(t), amount_mg, unit="mg", duration=INFUSION_H) for t in dose_times(regimen)],
        name=f"{amount_mg:g} mg {regimen}",
    )


def _truth(patients: pd.DataFrame, model) -> tuple[dict[int, dict[str, np.ndarray]], dict[int, str]]:
    """Noise-free outputs of every patient at its PK and hematology times, and the solver used for each.

    The engine and its settings are pinned (ODE engine, rtol 1e-8, atol 1e-10) so that the file does not
    change when the default engine does.  Patients are solved together with BDF, one stacked, vectorised
    call per trial and regimen (``"BDF-stacked"``); if a stacked solve fails, that group's patients are
    solved one at a time with BDF, then LSODA, then Radau, the first that succeeds.
    """
    from pkmodel.errors import SimulationError
    from pkmodel.simulation import simulate

    amounts = np.round(patients["DOSE"].to_numpy() * patients["WT"].to_numpy(), 1)
    columns = ["ID", "WT", "ALB", "CL", "V1", "KDEC", "CLS", "CIRC0", "MTT", "SLOPE"]
    settings = {"engine": "ode", "rtol": 1e-8, "atol": 1e-10}
    out: dict[int, dict[str, np.ndarray]] = {}
    solver: dict[int, str] = {}

    def keep(result, regimens, times, label):
        for k, pid in enumerate(result.ids.tolist()):
            record = {name: result.output(name)[:, k] for name in (*PK_OUTPUTS, "ANC")}
            record["TIME"] = times
            record["AMT"] = float(regimens[int(pid)].events[0].amount)
            out[int(pid)] = record
            solver[int(pid)] = label

    groups = patients.assign(AMT=amounts).groupby(["REP", "REGIMEN"], sort=True)
    for (_, regimen), group in groups:
        times = np.unique(np.concatenate([pk_times(regimen), hematology_times(regimen)]))
        regimens = {
            int(pid): _regimen(regimen, float(a)) for pid, a in zip(group["ID"], group["AMT"], strict=True)
        }
        try:
            result = simulate(model, regimens, times, parameters=group[columns], method="BDF", **settings)
            keep(result, regimens, times, "BDF-stacked")
            continue
        except SimulationError:
            pass
        for i, pid in zip(group.index, group["ID"], strict=True):
            one = {int(pid): regimens[int(pid)]}
            for method in ("BDF", "LSODA", "Radau"):
                try:
                    result = simulate(
                        model, one, times, parameters=group.loc[[i], columns], method=method, **settings
                    )
                except SimulationError as exc:
                    error = exc
                    continue
                keep(result, one, times, method)
                break
            else:
                raise SimulationError(f"patient {pid}: no ODE method solved the model ({error})")
    return out, solver


def _significant(values: np.ndarray, digits: int) -> np.ndarray:
    """Round to ``digits`` significant digits (zeros stay zero)."""
    values = np.asarray(values, dtype=float)
    with np.errstate(divide="ignore"):
        exponent = np.floor(np.log10(np.abs(values)))
    exponent = np.where(np.isfinite(exponent), exponent, 0.0)
    scale = 10.0 ** (digits - 1 - exponent)
    return np.round(values * scale) / scale


def _grade(values: np.ndarray, kind: str) -> np.ndarray:
    """CTCAE v5.0 grade 0-4 (own implementation, independent of pkmodel.grading)."""
    b2, b3, b4 = _CTCAE[kind]
    v = np.asarray(values, dtype=float)
    return (v < LLN[kind]).astype(int) + (v < b2) + (v < b3) + (v < b4)


@dataclass(frozen=True)
class Study:
    """A simulated study: its patients (with true individual parameters) and its NONMEM records."""

    patients: pd.DataFrame
    records: pd.DataFrame


def simulate_study(seed: int = SEED, replicates: int = 1) -> Study:
    """Simulate ``replicates`` trials of the design with one random generator seeded ``seed``.

    Parameters
    ----------
    seed : int
        Seed of ``numpy.random.default_rng``.
    replicates : int
        Copies of the 35-patient design (IDs run on across replicates; column REP).

    Returns
    -------
    Study
        ``patients``: one row per patient (ID, REP, REGIMEN, DOSE, WT, ALB, individual parameters, worst
        grades NEUTGR and LEUKGR); ``records``: the NONMEM-style table (see :func:`generate`).
    """
    from pkmodel.model import load_model

    model = load_model(MODEL)
    rng = np.random.default_rng(seed)
    patients = _patients(rng, design(replicates), model)
    truth, solver = _truth(patients, model)
    pk_rows, heme_rows, dose_rows = [], [], []
    for row in patients.itertuples(index=False):
        pid, reg = int(row.ID), row.REGIMEN
        sim = truth[pid]
        index = {t: k for k, t in enumerate(sim["TIME"].tolist())}
        for t in pk_times(reg):
            for name in PK_OUTPUTS:
                pk_rows.append((pid, t, name, sim[name][index[t]]))
        for t in hematology_times(reg):
            heme_rows.append((pid, t, sim["ANC"][index[t]], row.CIRC0, row.NONNEUT0))
        for t in dose_times(reg):
            dose_rows.append((pid, t, sim["AMT"]))

    # PK: y = f(1 + e_prop) + e_add; below the LLOQ -> BLQ=1, DV empty
    pk = pd.DataFrame(pk_rows, columns=["ID", "TIME", "DVID", "F"])
    eps = rng.standard_normal((len(pk), 2))
    prop = pk["DVID"].map({k: v["proportional"] for k, v in RESIDUAL.items() if k in PK_OUTPUTS}).to_numpy()
    add = pk["DVID"].map({k: v["additive"] for k, v in RESIDUAL.items() if k in PK_OUTPUTS}).to_numpy()
    y = pk["F"].to_numpy() * (1.0 + prop * eps[:, 0]) + add * eps[:, 1]
    lloq = pk["DVID"].map(LLOQ).to_numpy()
    blq = y < lloq
    pk["DV"] = np.where(blq, np.nan, _significant(y, _PK_DECIMALS))
    pk["LLOQ"] = lloq
    pk["BLQ"] = blq.astype(int)

    # ANC and WBC: log-normal errors, 2 decimals as a laboratory reports them
    heme = pd.DataFrame(heme_rows, columns=["ID", "TIME", "F", "CIRC0", "NONNEUT0"])
    anc_true = heme["F"].to_numpy()
    if not np.all(np.isfinite(anc_true) & (anc_true > 0)):
        from pkmodel.errors import SimulationError

        bad = heme.loc[~(np.isfinite(anc_true) & (anc_true > 0))].iloc[0]
        raise SimulationError(
            f"patient {int(bad.ID)}: simulated ANC {bad.F!r} at {bad.TIME:g} h is not positive; the solver "
            "did not resolve this patient's neutropenia: check the assumed truth (e.g. SLOPE, OMEGA2)"
        )
    anc = np.round(anc_true * np.exp(RESIDUAL["ANC"]["exponential"] * rng.standard_normal(len(heme))), 2)
    nonneut = heme["NONNEUT0"].to_numpy() * (anc_true / heme["CIRC0"].to_numpy()) ** WBC_MODEL["BETA"]
    nonneut = nonneut * np.exp(RESIDUAL["NONNEUT"]["exponential"] * rng.standard_normal(len(heme)))
    heme["DV"] = anc
    heme["WBC"] = np.round(anc + nonneut, 2)
    heme["DVID"] = "ANC"

    # worst on-treatment grades (samples after the first dose)
    on = heme["TIME"].to_numpy() > 0
    heme["NG"] = np.where(on, _grade(heme["DV"].to_numpy(), "ANC"), 0)
    heme["LG"] = np.where(on, _grade(heme["WBC"].to_numpy(), "WBC"), 0)
    worst = heme.groupby("ID")[["NG", "LG"]].max()
    patients = patients.copy()
    patients["SOLVER"] = patients["ID"].map(solver)
    patients["NEUTGR"] = patients["ID"].map(worst["NG"]).astype(int)
    patients["LEUKGR"] = patients["ID"].map(worst["LG"]).astype(int)

    doses = pd.DataFrame(dose_rows, columns=["ID", "TIME", "AMT"])
    records = _assemble(patients, doses, pk, heme)
    return Study(patients=patients, records=records)


def _assemble(
    patients: pd.DataFrame, doses: pd.DataFrame, pk: pd.DataFrame, heme: pd.DataFrame
) -> pd.DataFrame:
    """The NONMEM-style table: observations before the dose at the same time (pre-dose samples)."""
    doses = doses.assign(
        EVID=1,
        RATE=doses["AMT"] / INFUSION_H,
        CMT="DAR8_C",
        DV=np.nan,
        DVID="",
        LLOQ=np.nan,
        BLQ=0,
        WBC=np.nan,
    )
    doses["ORDER"] = 1
    obs_pk = pk.assign(EVID=0, AMT=0.0, RATE=0.0, CMT="", WBC=np.nan, ORDER=0)
    obs_heme = heme.assign(EVID=0, AMT=0.0, RATE=0.0, CMT="", LLOQ=np.nan, BLQ=0, ORDER=0)
    columns = ["ID", "TIME", "EVID", "AMT", "RATE", "CMT", "DV", "DVID", "LLOQ", "BLQ", "WBC", "ORDER"]
    table = pd.concat([doses[columns], obs_pk[columns], obs_heme[columns]], ignore_index=True)
    dvid_order = table["DVID"].map({"TAb": 0, "ADC": 1, "SN38": 2, "ANC": 3, "": 4})
    table = (
        table.assign(_dvid=dvid_order)
        .sort_values(["ID", "TIME", "ORDER", "_dvid"], kind="stable")
        .drop(columns=["ORDER", "_dvid"])
        .reset_index(drop=True)
    )
    info = patients.set_index("ID")
    for col in ("REGIMEN", "DOSE", "WT", "ALB", "NEUTGR", "LEUKGR"):
        table[col] = table["ID"].map(info[col])
    if "REP" in patients and patients["REP"].nunique() > 1:
        table["REP"] = table["ID"].map(info["REP"])
    return table


# ------------------------------------------------------------------------------------------ output

HEADER = """\
# SIMULATED DATA - NOT PATIENT DATA. ESG401-like phase 1 (design of NCT04892342), generated by
# pkmodel/examples/make_esg401_phase1.py (seed {seed}) from the assumed truth documented in
# pkmodel/examples/esg401_phase1.md (model adc_esg401_friberg with assumed IIV and residual errors).
# Times in h after the first dose; AMT mg of ADC (DOSE mg/kg x WT) infused over 1 h into DAR8_C
# (RATE mg/h); DV: TAb and ADC ug/mL, SN38 ng/mL, ANC 10^9/L; WBC 10^9/L on the ANC rows; BLQ=1
# with an empty DV below LLOQ; NEUTGR/LEUKGR worst on-treatment CTCAE v5.0 grade (LLN ANC 2.0, WBC 4.0).
"""


def _format(value: float, kind: str) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if kind == "int":
        return str(int(value))
    if kind == "sig":
        return np.format_float_positional(float(value), precision=_PK_DECIMALS, unique=True, trim="-")
    return np.format_float_positional(float(value), precision=6, unique=True, trim="-")


_KINDS = {
    "ID": "int", "TIME": "num", "EVID": "int", "AMT": "num", "RATE": "num", "CMT": "text", "DV": "num",
    "DVID": "text", "LLOQ": "num", "BLQ": "int", "WBC": "num", "REGIMEN": "text", "DOSE": "num", "WT": "num",
    "ALB": "num", "NEUTGR": "int", "LEUKGR": "int", "REP": "int",
}  # fmt: skip


def to_csv_text(records: pd.DataFrame, seed: int = SEED) -> str:
    """The dataset as CSV text with the SIMULATED header comment (deterministic formatting)."""
    columns = list(records.columns)
    lines = [HEADER.format(seed=seed).rstrip("\n"), ",".join(columns)]
    data = {c: records[c].tolist() for c in columns}
    for i in range(len(records)):
        fields = []
        for c in columns:
            v = data[c][i]
            fields.append(str(v) if _KINDS[c] == "text" else _format(v, _KINDS[c]))
        lines.append(",".join(fields))
    return "\n".join(lines) + "\n"


def generate(seed: int = SEED) -> pd.DataFrame:
    """The records of the shipped dataset (one trial, seed ``seed``).

    Columns: ID, TIME (h), EVID (0 observation, 1 dose), AMT (mg), RATE (mg/h), CMT (dose compartment),
    DV, DVID (TAb, ADC, SN38, ANC), LLOQ, BLQ, WBC (10^9/L, on ANC rows), REGIMEN (A or B), DOSE (mg/kg),
    WT (kg), ALB (g/L), NEUTGR and LEUKGR (worst on-treatment grade).
    """
    return simulate_study(seed, 1).records


def write_dataset(path: str | Path | None = None, seed: int = SEED) -> Path:
    """Write the dataset (default: ``esg401_phase1.csv`` next to this script) and return its path."""
    return _write(simulate_study(seed, 1), path, seed)


def _write(study: Study, path: str | Path | None, seed: int) -> Path:
    target = Path(path) if path is not None else Path(__file__).with_name("esg401_phase1.csv")
    target.write_text(to_csv_text(study.records, seed), encoding="utf-8")
    return target


# ------------------------------------------------------------------------------------- calibration


def incidences(patients: pd.DataFrame) -> dict[str, float]:
    """Percent of patients with neutropenia / leukopenia of any grade and of grade >= 3."""
    ng, lg = patients["NEUTGR"].to_numpy(), patients["LEUKGR"].to_numpy()
    return {
        "neutropenia_any": 100.0 * float(np.mean(ng >= 1)),
        "neutropenia_ge3": 100.0 * float(np.mean(ng >= 3)),
        "leukopenia_any": 100.0 * float(np.mean(lg >= 1)),
        "leukopenia_ge3": 100.0 * float(np.mean(lg >= 3)),
    }


def expected_incidence(replicates: int = 30, seed: int = CALIBRATION_SEED) -> pd.DataFrame:
    """Incidences of ``replicates`` simulated trials of the design (the calibration, seed-independent).

    Returns
    -------
    pandas.DataFrame
        One row per trial (REP) and the four incidences (%), plus a last row ``"mean"``.
    """
    study = simulate_study(seed, replicates)
    rows = []
    for rep, group in study.patients.groupby("REP"):
        rows.append({"REP": rep, **incidences(group)})
    table = pd.DataFrame(rows)
    mean = table.drop(columns="REP").mean()
    return pd.concat([table, pd.DataFrame([{"REP": "mean", **mean.to_dict()}])], ignore_index=True)


def main(argv: list[str] | None = None) -> int:
    """Command line: write the dataset, or (``--calibrate N``) print the expected incidences."""
    parser = argparse.ArgumentParser(
        prog="python -m pkmodel.examples.make_esg401_phase1", description=__doc__
    )
    parser.add_argument("--out", help="output CSV (default: pkmodel/examples/esg401_phase1.csv)")
    parser.add_argument("--calibrate", type=int, metavar="N", help="simulate N trials and print incidences")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    if args.calibrate:
        table = expected_incidence(args.calibrate)
        print(table.round(1).to_string(index=False))
        reps = table[table["REP"] != "mean"]
        within = np.ones(len(reps), bool)
        for key in ("neutropenia_any", "neutropenia_ge3", "leukopenia_any"):
            within &= np.abs(reps[key].to_numpy(dtype=float) - PUBLISHED[key]) <= 12.0
        print(f"trials within 12 pp of all three published incidences: {within.mean():.0%}")
    else:
        study = simulate_study(SEED, 1)
        path = _write(study, args.out, SEED)
        achieved = incidences(study.patients)
        print(f"wrote {path}")
        print(
            "incidences (%): "
            + ", ".join(f"{k} {v:.1f} (published {PUBLISHED[k]:g})" for k, v in achieved.items())
        )
    print(f"{time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
