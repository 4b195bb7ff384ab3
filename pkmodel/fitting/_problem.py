"""From a :class:`FitSpec` and its dataset to an estimation problem with model-based predictions.

Every subject's observations become an estimation :class:`~pkmodel.estimation.Subject` whose ``data``
holds everything the prediction needs that does not change during the fit (a :class:`_SubjectData`):
the regimen, the sorted distinct observation times, where each observation sits in the simulated
output arrays, the model covariates and the body weight.  A prediction for ``k`` parameter sets is one
call of :func:`pkmodel.simulate` with ``k`` simulated subjects (the exact engine then batches the
matrix exponentials of all ``k`` sets).

For a linear model (and ``engine`` "auto" or "exact") each subject also gets its fixed dose and
observation design (:mod:`pkmodel.estimation._linear`), and :meth:`FitProblem.predict_many` computes all
subjects × parameter sets of an estimation step in one vectorised modal evaluation, with the same
results as the exact engine; the few parameter sets whose eigenvectors are ill-conditioned go through
:func:`pkmodel.simulate` as before.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from pkmodel.data import Dataset, validate_dataset
from pkmodel.dosing import Regimen
from pkmodel.errors import DatasetError, EstimationError, SimulationError, SpecError
from pkmodel.estimation import (
    CovariateEffect,
    IndividualParameter,
    OmegaBlock,
    PopulationProblem,
    ResidualError,
    Subject,
    Theta,
)
from pkmodel.estimation._linear import ModalPredictor, SubjectDesign, design_or_none
from pkmodel.fitting._spec import DEFAULT_OMEGA, FitSpec
from pkmodel.simulation import simulate

__all__ = ["FitProblem", "build_problem", "typical_values"]


@dataclass(frozen=True, eq=False)
class _SubjectData:
    """What the prediction of one subject needs, computed once (private)."""

    regimen: Regimen
    times: np.ndarray  # (n_times,) distinct sorted observation times, h
    gather: tuple[tuple[str, np.ndarray, np.ndarray], ...]  # (output, observation columns, time rows)
    constants: dict[str, float]  # model covariates and fixed parameter values
    weight: float | None
    n_obs: int
    dvid: np.ndarray  # (n_obs,) DVID as in the dataset
    rows: np.ndarray  # (n_obs,) dataset line numbers
    arguments: np.ndarray | None = None  # (n_args,) model arguments before the listed parameters
    design: SubjectDesign | None = None  # fixed time structure for the modal predictor (linear models)


@dataclass(frozen=True)
class _Group:
    """A sequence of subjects as :meth:`FitProblem.predict_many` predicts them (private)."""

    subjects: tuple  # the subjects themselves (the cache key is their IDs; these must be the same objects)
    fast: np.ndarray  # (F,) positions of the subjects with a modal design
    assembly: object  # their assembled designs (pkmodel.estimation._linear._Assembly), or None
    base: np.ndarray | None  # (F, n_args) their model arguments before the listed parameters
    width: int  # the largest number of observations of the subjects
    columns: np.ndarray  # (M, width) the columns that are a subject's observations


@dataclass(frozen=True, eq=False)
class FitProblem:
    """A fit specification bound to its dataset: subjects, prediction function and problem.

    Attributes
    ----------
    spec : FitSpec
    dataset : Dataset
    subjects : tuple of Subject
        Estimation subjects (those with at least one observation used).
    problem : PopulationProblem or None
        The population problem (None for ``method = "individual"``).
    thetas : tuple of Theta
        Typical values and covariate effects, in problem order.
    parameters : tuple of IndividualParameter
    residual : tuple of ResidualError
    outputs : tuple of str
        Model outputs in residual (output index) order.
    notes : tuple of str
        What was left out of the fit and why (subjects without observations, BLQ records dropped).
    n_simulate_calls : list of int
        A one-element counter of :func:`pkmodel.simulate` calls (for benchmarks).
    n_fast_predictions : list of int
        A one-element counter of parameter sets predicted by the modal path (:meth:`predict_many`).
    """

    spec: FitSpec
    dataset: Dataset
    subjects: tuple[Subject, ...]
    problem: PopulationProblem | None
    thetas: tuple[Theta, ...]
    parameters: tuple[IndividualParameter, ...]
    residual: tuple[ResidualError, ...]
    outputs: tuple[str, ...]
    notes: tuple[str, ...]
    _listed: tuple[str, ...] = field(repr=False)
    _lower: np.ndarray = field(repr=False)
    _upper: np.ndarray = field(repr=False)
    n_simulate_calls: list = field(default_factory=lambda: [0], repr=False)
    n_fast_predictions: list = field(default_factory=lambda: [0], repr=False)
    _modal: ModalPredictor | None = field(default=None, repr=False)
    _argument_index: np.ndarray | None = field(default=None, repr=False)
    _groups: dict = field(default_factory=dict, repr=False)  # see _group

    def predict_many(self, subjects: Sequence[Subject], params: Mapping[str, np.ndarray]) -> np.ndarray:
        """Predictions of ``M`` subjects, each for ``K`` parameter sets, shape (M, K, max n_obs).

        Linear models use one vectorised modal evaluation for all subjects and sets (see
        :mod:`pkmodel.estimation._linear`); parameter sets it does not trust (ill-conditioned
        eigenvectors, singular steady state) and nonlinear models use :meth:`predict_batch`.

        Parameters
        ----------
        subjects : sequence of Subject
            Estimation subjects of this problem.
        params : mapping of str to ndarray, shape (M, K)
            Individual values of the listed model parameters, one row per subject.

        Returns
        -------
        ndarray, shape (M, K, L)
            ``L`` is the largest ``n_obs`` of ``subjects``; entries past a subject's ``n_obs`` are 1.0.
            NaN marks a parameter set outside the model's bounds or one whose simulation fails.
        """
        m_count = len(subjects)
        values = [np.asarray(params[name], dtype=float) for name in self._listed]
        k_count = values[0].shape[1] if values else 1
        stacked = np.empty((m_count, k_count, len(values)))
        for i, v in enumerate(values):
            stacked[:, :, i] = v
        lower, upper = self._lower[:, 0], self._upper[:, 0]
        ok = np.all(np.isfinite(stacked) & (stacked >= lower) & (stacked <= upper), axis=2)
        group = self._group(subjects)
        out = np.ones((m_count, k_count, group.width))
        slow = np.ones((m_count, k_count), dtype=bool)
        if group.fast.size:
            assert self._modal is not None and group.assembly is not None
            asm = group.assembly
            every = group.fast.size == m_count
            good = ok if every else ok[group.fast]
            args = np.repeat(group.base[:, None, :], k_count, axis=1)
            # sets outside the bounds are computed at the model's values and then discarded
            sets = stacked if every else stacked[group.fast]
            args[:, :, self._argument_index] = np.where(
                good[:, :, None], sets, args[:, :, self._argument_index]
            )
            outputs, done = self._modal.outputs(asm, args)
            if every:
                out[asm.o_subject, :, asm.o_column] = outputs[asm.o_output, asm.o_target, :]
                slow = ~done
            else:
                block = np.ones((group.fast.size, k_count, group.width))
                block[asm.o_subject, :, asm.o_column] = outputs[asm.o_output, asm.o_target, :]
                out[group.fast] = block
                slow[group.fast] = ~done
            self.n_fast_predictions[0] += int(np.count_nonzero(done & good))
        slow &= ok
        for m in np.flatnonzero(slow.any(axis=1)):
            ks = np.flatnonzero(slow[m])
            subject = subjects[m]
            batch = self.predict_batch(subject, {n: stacked[m, ks, i] for i, n in enumerate(self._listed)})
            out[m, ks, : subject.n_obs] = batch
        out[~ok[:, :, None] & group.columns[:, None, :]] = np.nan
        return out

    def _group(self, subjects: Sequence[Subject]) -> _Group:
        """What :meth:`predict_many` needs of a sequence of subjects that does not depend on the sets
        (remembered for the last few sequences: an estimation passes the same ones again and again)."""
        key = tuple(s.id for s in subjects)
        cache = self._groups
        group = cache.get(key)
        if group is None or any(a is not b for a, b in zip(group.subjects, subjects, strict=True)):
            fast = [m for m, s in enumerate(subjects) if s.data.design is not None] if self._modal else []
            sub = [subjects[m] for m in fast]
            n_obs = np.array([s.n_obs for s in subjects])
            width = int(n_obs.max())
            group = _Group(
                subjects=tuple(subjects),
                fast=np.array(fast, dtype=int),
                assembly=(
                    self._modal.assembly(tuple(s.id for s in sub), [s.data.design for s in sub])
                    if fast
                    else None
                ),
                base=np.stack([s.data.arguments for s in sub]) if fast else None,
                width=width,
                columns=np.arange(width)[None, :] < n_obs[:, None],  # (M, L)
            )
            if len(cache) >= 16:
                cache.clear()
            cache[key] = group
        return group

    def predict_batch(self, subject: Subject, params: Mapping[str, np.ndarray]) -> np.ndarray:
        """Predictions of ``k`` parameter sets for one subject, shape (k, n_obs).

        Parameters
        ----------
        subject : Subject
            An estimation subject of this problem.
        params : mapping of str to ndarray, shape (k,)
            Individual values of the listed model parameters.

        Returns
        -------
        ndarray, shape (k, n_obs)
            Each observation's prediction in its output's unit; NaN for a parameter set outside the
            model's bounds or where its simulation fails (the estimation engine then backs off); the other
            sets are still predicted.
        """
        data: _SubjectData = subject.data
        values = [np.atleast_1d(np.asarray(params[name], dtype=float)) for name in self._listed]
        k = max((v.shape[0] for v in values), default=1)
        stacked = np.empty((len(values), k))
        for i, v in enumerate(values):
            stacked[i] = v
        ok = np.all(np.isfinite(stacked) & (stacked >= self._lower) & (stacked <= self._upper), axis=0)
        out = np.full((k, data.n_obs), np.nan)
        if not ok.any():
            return out
        use = ok if not ok.all() else slice(None)
        arguments = dict(data.constants)
        for name, row in zip(self._listed, stacked, strict=True):
            arguments[name] = row[use]
        self.n_simulate_calls[0] += 1
        try:
            result = simulate(
                self.spec.model,
                data.regimen,
                data.times,
                parameters=arguments,
                weight=data.weight,
                engine=self.spec.options.engine,
            )
        except SimulationError:
            # one failing set fails the whole (stacked) simulation: halve the sets until the failing ones are
            # alone, so that only they are NaN (a batched estimation step simulates many sets at once)
            index = np.flatnonzero(ok)
            if index.size > 1:
                for part in np.array_split(index, 2):
                    values = {name: row[part] for name, row in zip(self._listed, stacked, strict=True)}
                    out[part] = self.predict_batch(subject, values)
            return out
        block = np.empty((int(np.count_nonzero(ok)), data.n_obs))
        for output, columns, time_rows in data.gather:
            block[:, columns] = result.outputs[output][time_rows, :].T
        out[use] = block
        return out

    def predict(self, subject: Subject, params: Mapping[str, float]) -> np.ndarray:
        """Predictions of one parameter set, shape (n_obs,) (see :meth:`predict_batch`)."""
        return self.predict_batch(subject, {k: np.array([float(v)]) for k, v in params.items()})[0]

    def simulate_subject(
        self, subject: Subject, params: Mapping[str, np.ndarray], times: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Outputs of ``k`` parameter sets on a time grid (for plots): output → (n_times, k)."""
        data: _SubjectData = subject.data
        arguments = dict(data.constants)
        for name in self._listed:
            arguments[name] = np.atleast_1d(np.asarray(params[name], dtype=float))
        result = simulate(
            self.spec.model,
            data.regimen,
            times,
            parameters=arguments,
            weight=data.weight,
            engine=self.spec.options.engine,
        )
        return {name: result.outputs[name] for name in self.outputs}


def _read_data(spec: FitSpec) -> Dataset:
    checked = validate_dataset(spec.data_path, compartments=spec.compartments, dose_unit=spec.dose_unit)
    checked.raise_if_problems()
    assert checked.dataset is not None
    return checked.dataset


def _spec_error(spec: FitSpec, key: str, message: str) -> SpecError:
    return SpecError(f"{spec.path}: key '{key}': {message}")


def _output_of_dvid(spec: FitSpec, dataset: Dataset) -> dict[str, str]:
    """DVID value → model output, checked against the DVIDs present in the data."""
    model = spec.model
    absent = [d for d in spec.exclude_dvid if d not in dataset.outputs]
    if absent:
        raise _spec_error(
            spec,
            "data.exclude_dvid",
            f"DVID {absent[0]!r} is not in the dataset (its DVIDs: {', '.join(map(str, dataset.outputs))}); "
            "remove it from the list",
        )
    present = [d for d in dataset.outputs if d not in spec.exclude_dvid]
    if spec.dvid is not None:
        unmapped = [d for d in present if d not in spec.dvid]
        if unmapped:
            obs = dataset.observations()
            rows = obs.loc[obs["DVID"] == unmapped[0], "ROW"].head(5).tolist()
            raise _spec_error(
                spec,
                "data.dvid",
                f"the dataset's DVID {unmapped[0]!r} (lines {', '.join(map(str, rows))}, ...) is not mapped "
                f'to a model output; add {unmapped[0]} = "<output>" to [data] dvid (outputs of '
                f"{model.name}: {', '.join(model.outputs)})",
            )
        return {d: spec.dvid[d] for d in present}
    mapping = {}
    for d in present:
        if d in model.outputs:
            mapping[d] = d
        elif d == "DV" and len(model.outputs) == 1:
            mapping[d] = next(iter(model.outputs))
        else:
            obs = dataset.observations()
            rows = obs.loc[obs["DVID"] == d, "ROW"].head(5).tolist()
            raise _spec_error(
                spec,
                "data.dvid",
                f"the dataset's DVID {d!r} (lines {', '.join(map(str, rows))}, ...) is not an output of model "
                f"{model.name} ({', '.join(model.outputs)}) and [data] dvid does not map it; add "
                f'[data] dvid = {{ {d} = "<output>" }}',
            )
    return mapping


def _covariate_value(spec: FitSpec, dataset: Dataset, rows: np.ndarray, name: str, key: str, sid) -> float:
    """The one value of covariate ``name`` on the records ``rows`` (positions) of subject ``sid``."""
    column = dataset.arrays[name][rows]
    if column.dtype == np.float64:  # the usual case, checked in numpy: one value on every record
        given = column[~np.isnan(column)]
        if given.size and np.all(given == given[0]):
            return float(given[0])
    records = dataset.records.iloc[rows]
    values = records[name].dropna()
    if values.nunique() > 1:
        lines = records.loc[records[name].ne(values.iloc[0]) & records[name].notna(), "ROW"].head(3).tolist()
        raise _spec_error(
            spec,
            key,
            f"covariate {name} changes within ID {sid} (lines {', '.join(map(str, lines))}); fits use one "
            f"value per subject: put the baseline value in its own column (e.g. {name}BL) and use that",
        )
    value = values.iloc[0]
    if isinstance(value, str):
        raise _spec_error(
            spec, key, f"covariate {name} is text ({value!r} for ID {sid}); it must be a number"
        )
    return float(value)


def build_problem(spec: FitSpec, dataset: Dataset | None = None) -> FitProblem:
    """Read the dataset of a spec and build the estimation problem.

    Parameters
    ----------
    spec : FitSpec
    dataset : Dataset, optional
        Already read (default: read ``spec.data_path``).

    Returns
    -------
    FitProblem

    Raises
    ------
    SpecError
        Unmapped DVIDs, outputs without a residual model or without observations, covariates missing
        from the dataset or changing over time, log-additive outputs with DV <= 0, BLQ data with FO.
    DatasetError
        When the dataset breaks a rule of :func:`pkmodel.data.read_dataset`.

    Examples
    --------
    >>> import pkmodel.fitting as fitting
    >>> from pkmodel.model import fits_dir
    >>> spec = fitting.load_fit_spec(fits_dir() / "theoph_foce.toml")
    >>> fp = fitting.build_problem(spec)
    >>> len(fp.subjects), sum(s.n_obs for s in fp.subjects), fp.outputs
    (12, 132, ('CP',))
    """
    model = spec.model
    if dataset is None:
        dataset = _read_data(spec)
    notes: list[str] = []
    dvid_map = _output_of_dvid(spec, dataset)
    outputs = tuple(r.output for r in spec.residual)
    observed = sorted(set(dvid_map.values()))
    for o in observed:
        if o not in outputs:
            raise _spec_error(
                spec,
                "residual",
                f"the dataset has observations of output {o!r} but there is no [residual.{o}] table; add one "
                '(model = "additive" | "proportional" | "combined" | "log-additive")',
            )
    for o in outputs:
        if o not in observed:
            raise _spec_error(
                spec,
                f"residual.{o}",
                f"the dataset has no observation of output {o!r}; remove [residual.{o}] or check [data] dvid",
            )

    # covariates: model covariates (passed to the simulation) and covariate effects (typical values)
    needed_model_cov = [c for c in model.covariates if c not in spec.covariate_values]
    for c in needed_model_cov:
        if c not in dataset.covariate_names:
            raise _spec_error(
                spec,
                "data.covariate_values",
                f"model {model.name} needs covariate {c} but the dataset has no {c} column (its covariates: "
                f"{', '.join(dataset.covariate_names) or 'none'}); add the column, or give one value for "
                f"everyone: [data] covariate_values = {{ {c} = ... }}",
            )
    for p in spec.parameters:
        for c in p.covariates:
            if c.covariate not in dataset.covariate_names:
                raise _spec_error(
                    spec,
                    f"parameters.{p.name}.covariates.{c.covariate}",
                    f"the dataset has no covariate column {c.covariate} (its covariates: "
                    f"{', '.join(dataset.covariate_names) or 'none'}); add the column or remove the effect",
                )
    weight_from_data = (
        spec.dose_unit == "mg/kg" and "WT" not in model.covariates and "WT" in dataset.covariate_names
    )
    if spec.dose_unit == "mg/kg" and "WT" not in model.covariates and not weight_from_data:
        raise _spec_error(
            spec, "data.dose_unit", "doses in mg/kg need the body weight: add a WT column (kg) to the dataset"
        )

    # missing covariate values on the records of a subject
    required = {*needed_model_cov, *(c.covariate for p in spec.parameters for c in p.covariates)}
    if weight_from_data:
        required.add("WT")
    for name in sorted(required):
        missing = dataset.records[name].isna()
        if missing.any():
            lines = dataset.records.loc[missing, "ROW"].head(5).tolist()
            raise DatasetError(
                f"covariate {name} is missing on line(s) {', '.join(map(str, lines))}: the fit needs it on "
                "every record; fill it in",
                dataset.file,
            )

    listed = tuple(p.name for p in spec.parameters)  # unlisted model parameters keep the model's value
    # linear models with the exact engine: the modal predictor (same results, one vectorised call)
    modal = ModalPredictor(model) if model.is_linear and spec.options.engine in ("auto", "exact") else None
    defaults = {
        **{k: p.value for k, p in model.parameters.items()},
        **{k: c.value for k, c in model.covariates.items()},
        **{k: i.default for k, i in model.inputs.items()},
    }
    base_arguments = np.array([float(defaults[name]) for name in model.argument_names])
    output_index = {o: i for i, o in enumerate(outputs)}
    log_outputs = {r.output for r in spec.residual if r.model == "log-additive"}
    subjects = []
    no_obs = []
    dropped_blq = dict.fromkeys(outputs, 0)
    excluded = dict.fromkeys(spec.exclude_dvid, 0)
    arrays = dataset.arrays  # the dataset's columns, sliced per subject (no per-subject tables)
    for sid in dataset.ids:
        records = dataset.rows_of(sid)
        # the used observations (EVID 0, MDV 0; those of Subject.observations) as numpy columns
        used = (arrays["EVID"][records] == 0) & (arrays["MDV"][records] == 0)
        obs = {c: arrays[c][records[used]] for c in ("ROW", "TIME", "DVID", "DV", "LLOQ", "BLQ")}
        if excluded:
            leave_out = np.array([d in excluded for d in obs["DVID"]], dtype=bool)
            for d in obs["DVID"][leave_out]:
                excluded[d] += 1
            obs = {c: v[~leave_out] for c, v in obs.items()}
        if spec.blq_method == "drop":
            for d in obs["DVID"][obs["BLQ"]]:
                dropped_blq[dvid_map[d]] += 1
            obs = {c: v[~obs["BLQ"]] for c, v in obs.items()}
        n_obs = len(obs["ROW"])
        if n_obs == 0:
            no_obs.append(sid)
            continue
        out_names = np.array([dvid_map[d] for d in obs["DVID"]], dtype=object)
        dv = obs["DV"].astype(float)
        blq = obs["BLQ"].astype(bool)
        bad = np.flatnonzero(np.isin(out_names, list(log_outputs)) & ~blq & ~(dv > 0))
        if bad.size:
            raise _spec_error(
                spec,
                f"residual.{out_names[bad[0]]}.model",
                f"the log-additive error model needs DV > 0, but ID {sid} has DV {dv[bad[0]]:g} on line "
                f"{int(obs['ROW'][bad[0]])}; flag it BLQ with its LLOQ, or use another error model",
            )
        regimen = dataset.regimen_of(sid)
        times = obs["TIME"].astype(float)
        unique, inverse = np.unique(times, return_inverse=True)
        gather = []
        for o in outputs:
            cols = np.flatnonzero(out_names == o)
            if cols.size:
                gather.append((o, cols, inverse[cols]))
        constants: dict[str, float] = {}
        for c in model.covariates:
            if c in spec.covariate_values:
                constants[c] = spec.covariate_values[c]
            else:
                constants[c] = _covariate_value(spec, dataset, records, c, f"data ({c})", sid)
        cov_values: dict[str, float] = {}
        for p in spec.parameters:
            for c in p.covariates:
                if c.covariate not in cov_values:  # (one covariate may act on several parameters)
                    key = f"parameters.{p.name}.covariates.{c.covariate}"
                    cov_values[c.covariate] = _covariate_value(spec, dataset, records, c.covariate, key, sid)
        weight = (
            _covariate_value(spec, dataset, records, "WT", "data.dose_unit", sid)
            if weight_from_data
            else None
        )
        lloq = obs["LLOQ"].astype(float)
        arguments = design = None
        if modal is not None:
            arguments = base_arguments.copy()
            for name, value in constants.items():
                arguments[model.argument_names.index(name)] = value
            dose_weight = weight if weight is not None else constants.get("WT")
            obs_output = np.array([model.numeric.output_names.index(o) for o in out_names], dtype=int)
            design = design_or_none(model, regimen, unique, dose_weight, obs_output, inverse)
        data = _SubjectData(
            regimen=regimen,
            times=unique,
            gather=tuple(gather),
            constants=constants,
            weight=weight,
            n_obs=n_obs,
            dvid=obs["DVID"].astype(object),
            rows=obs["ROW"],
            arguments=arguments,
            design=design,
        )
        subjects.append(
            Subject(
                sid,
                dv=dv,
                time=times,
                output=np.array([output_index[o] for o in out_names], dtype=int),
                lloq=np.where(np.isfinite(lloq), lloq, np.nan),
                blq=blq,
                covariates=cov_values,
                data=data,
            )
        )
    for d, n in excluded.items():
        notes.append(f"{n} observation(s) of DVID {d} left out of the fit ([data] exclude_dvid)")
    if no_obs:
        notes.append(
            f"{len(no_obs)} subject(s) without observations are not in the fit (IDs "
            f"{', '.join(map(str, no_obs[:10]))}{', ...' if len(no_obs) > 10 else ''})"
        )
    n_dropped = sum(dropped_blq.values())
    if n_dropped:
        detail = ", ".join(f"{o}: {n}" for o, n in dropped_blq.items() if n)
        notes.append(f'{n_dropped} BLQ observation(s) dropped (blq.method = "drop", M1): {detail}')
    if not subjects:
        raise _spec_error(spec, "fit.data", "no subject has an observation to fit; check EVID/MDV and DVIDs")
    n_blq = sum(int(s.blq.sum()) for s in subjects)
    if spec.method == "fo" and n_blq:
        raise _spec_error(
            spec,
            "blq.method",
            f"method fo cannot use the {n_blq} BLQ observations (M3 needs the conditional likelihood); set "
            '[blq] method = "drop" or use method = "foce-i"',
        )
    if spec.blq_method == "M3" and n_blq:
        notes.append(f"{n_blq} BLQ observation(s) enter the likelihood as censored (Beal M3)")

    thetas = []
    parameters = []
    for p in spec.parameters:
        thetas.append(Theta(p.name, p.theta, lower=p.lower, upper=p.upper, fixed=p.fixed))
        effects = []
        for c in p.covariates:
            tname = f"{p.name}_{c.covariate}"
            thetas.append(Theta(tname, c.theta, lower=c.lower, upper=c.upper, fixed=not c.estimate))
            effects.append(CovariateEffect(c.covariate, theta=tname, reference=c.reference, form=c.kind))
        parameters.append(IndividualParameter(p.name, theta=p.name, eta=p.eta_name, covariates=effects))
    residual = tuple(
        ResidualError(
            r.model,
            additive=r.additive,
            proportional=r.proportional,
            output=output_index[r.output],
            name=r.output,
            fix_additive=r.fix_additive,
            fix_proportional=r.fix_proportional,
        )
        for r in spec.residual
    )
    lower = np.array([model.parameters[n].lower for n in listed])[:, None]
    upper = np.array([model.parameters[n].upper for n in listed])[:, None]
    fp = FitProblem(
        spec=spec,
        dataset=dataset,
        subjects=tuple(subjects),
        problem=None,
        thetas=tuple(thetas),
        parameters=tuple(parameters),
        residual=residual,
        outputs=outputs,
        notes=tuple(notes),
        _listed=listed,
        _lower=lower,
        _upper=upper,
        _modal=modal,
        _argument_index=np.array([model.argument_names.index(n) for n in listed], dtype=int),
    )
    if spec.method != "individual":
        problem = PopulationProblem(
            subjects,
            thetas=thetas,
            parameters=parameters,
            omega=_omega_blocks(spec),
            residual=residual,
            predict_batch=fp.predict_batch,
            predict_many=fp.predict_many,
        )
        object.__setattr__(fp, "problem", problem)
    _check_initial_predictions(fp)
    return fp


def _omega_blocks(spec: FitSpec) -> list[OmegaBlock]:
    """Ω blocks in parameter order: a declared block where its first member is, single η elsewhere."""
    blocks = []
    done = set()
    for name in spec.eta_owners:
        if name in done:
            continue
        block = next((b for b in spec.omega_blocks if name in b), None)
        if block is None:
            variance = spec.omega_init.get((name,), DEFAULT_OMEGA)
            blocks.append(OmegaBlock([f"eta_{name}"], [variance]))
            done.add(name)
            continue
        k = len(block)
        matrix = np.zeros((k, k))
        for i, a in enumerate(block):
            matrix[i, i] = spec.omega_init.get((a,), DEFAULT_OMEGA)
            for j, b in enumerate(block[:i]):
                cov = spec.omega_init.get((a, b), spec.omega_init.get((b, a), 0.0))
                matrix[i, j] = matrix[j, i] = cov
        try:
            blocks.append(OmegaBlock([f"eta_{a}" for a in block], matrix, diagonal=False))
        except EstimationError as exc:  # not positive definite
            raise _spec_error(spec, "omega.init", f"{exc}") from None
        done.update(block)
    return blocks


def typical_values(
    spec: FitSpec, theta: Mapping[str, float], covariates: Mapping[str, float]
) -> dict[str, float]:
    """Typical values of the listed parameters for one subject: θ times its covariate effects.

    Parameters
    ----------
    spec : FitSpec
    theta : mapping of str to float
        Thetas by name (parameter names and ``<parameter>_<covariate>``).
    covariates : mapping of str to float
        The subject's covariates.

    Returns
    -------
    dict of str to float
    """
    out = {}
    for p in spec.parameters:
        value = float(theta[p.name])
        for c in p.covariates:
            x = covariates[c.covariate]
            exponent = float(theta[f"{p.name}_{c.covariate}"])
            if c.kind == "power":
                value *= (x / c.reference) ** exponent
            elif c.kind == "linear":
                value *= 1.0 + exponent * (x - c.reference)
            else:
                value *= math.exp(exponent * (x - c.reference))
        out[p.name] = value
    return out


def _check_initial_predictions(fp: FitProblem) -> None:
    """Predict every subject at the initial typical values; raise on configuration errors.

    With the modal predictor (linear models) all subjects are predicted in one call first; only those
    with a non-finite prediction are then simulated one by one, which raises the same error, for the
    same first subject, as simulating them all would.
    """
    spec = fp.spec
    initial = {t.name: t.initial for t in fp.thetas}
    suspects = fp.subjects
    if fp._modal is not None and fp.subjects:
        typical = [typical_values(spec, initial, s.covariates) for s in fp.subjects]
        params = {name: np.array([[t[name]] for t in typical]) for name in fp._listed}
        values = fp.predict_many(fp.subjects, params)[:, 0, :]
        suspects = tuple(
            s for s, row in zip(fp.subjects, values, strict=True) if not np.all(np.isfinite(row[: s.n_obs]))
        )
    for s in suspects:
        data: _SubjectData = s.data
        arguments = dict(data.constants)
        arguments.update(typical_values(spec, initial, s.covariates))
        try:
            simulate(
                spec.model,
                data.regimen,
                data.times,
                parameters=arguments,
                weight=data.weight,
                engine=spec.options.engine,
            )
        except SimulationError as exc:
            raise SpecError(
                f"{spec.path}: the model cannot be simulated for ID {s.id} at the initial values: {exc}"
            ) from None
