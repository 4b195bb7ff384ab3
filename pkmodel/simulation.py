"""Simulation: one API, two engines.

:func:`simulate` runs a model for one or many subjects under a dosing regimen and returns a
:class:`SimulationResult`.  Two engines share the event handling:

- ``"exact"`` (linear models): between events the solution is advanced exactly by matrix
  exponentials of the augmented system ``[[K, I], [0, 0]]·Δt``, which give both ``e^{KΔt}`` and
  ``∫₀^Δt e^{Ks} ds`` (so infusions and constant inputs are exact too); boluses are jumps in the
  state; doses superpose; steady state (SS=1/2) is the exact fixed point of the one-interval map.
  All subjects are advanced together with batched matrix exponentials.
- ``"hybrid"`` (nonlinear models whose linear part is closed, e.g. linear PK driving nonlinear PD):
  the linear subsystem is solved exactly (eigendecomposition per subject) and only the remaining
  states are integrated, by an adaptive explicit Runge–Kutta method (DOP853) with the linear
  solution as an exact input; see :mod:`pkmodel._hybrid`.  Groups with SS doses, subjects with
  ill-conditioned eigenvectors and the subjects whose nonlinear part turns stiff are handed to the ODE
  engine.
- ``"ode"`` (any model): a stiff solver (BDF by default) with the analytic Jacobian, restarted at
  every dose and infusion boundary so that no event is stepped over.  Subjects are stacked into one
  system with a block-diagonal sparse Jacobian.

Conventions: time in h from 0; at a time that coincides with a dose, the reported value is *after*
the dose (right-continuous); arrays put times on axis 0: outputs have shape ``(n_times, n_subjects)``.

Examples
--------
>>> from pkmodel import load_model, simulate, parse_regimen
>>> m = load_model("one_compartment_iv")
>>> res = simulate(m, parse_regimen("100 mg once"), times=[0, 10], parameters={"CL": 1.0, "V": 10.0})
>>> [round(float(v), 6) for v in res.output("CP")[:, 0]]
[10.0, 3.678794]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.linalg
import scipy.sparse
from scipy.integrate import solve_ivp

from ._hybrid import Extremes, linear_subsystem, run_hybrid
from .dosing import Infusion, Regimen
from .errors import PkmodelError, SimulationError
from .model import Model

__all__ = ["SimulationResult", "simulate"]

_ROUND = 12  # decimals used to recognise equal time steps when caching matrix exponentials


# --------------------------------------------------------------------------------------------- result


@dataclass(frozen=True)
class SimulationResult:
    """Simulated outputs (and amounts) on a time grid for one or more subjects.

    Attributes
    ----------
    times : ndarray, shape (n_times,)
        Time, h.
    ids : ndarray, shape (n_subjects,)
        Subject identifiers.
    outputs : dict of str to ndarray, shape (n_times, n_subjects)
        Each output in its declared unit.
    states : ndarray, shape (n_times, n_subjects, n_states)
        Compartment amounts in their units (``(n_times, n_subjects, 0)`` when simulated with
        ``keep_states=False``).
    units : dict of str to str
        Unit of every output and state.
    state_names : tuple of str
    engine : str
        ``"exact"``, ``"hybrid"`` or ``"ode"``.
    """

    times: np.ndarray
    ids: np.ndarray
    outputs: dict[str, np.ndarray]
    states: np.ndarray
    units: dict[str, str]
    state_names: tuple[str, ...]
    engine: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def warnings(self) -> tuple[str, ...]:
        """Problems found in the result (e.g. negative amounts from the solver); empty when clean."""
        return tuple(self.info.get("warnings", ()))

    @property
    def ok(self) -> bool:
        """True when the simulation raised no warnings."""
        return not self.warnings

    def output(self, name: str) -> np.ndarray:
        """One output, shape ``(n_times, n_subjects)``."""
        if name in self.outputs:
            return self.outputs[name]
        if name in self.state_names:
            if self.states.shape[2] == 0:
                raise SimulationError(
                    f"'{name}' is a state and the amounts were not kept: simulate(..., keep_states=True)"
                )
            return self.states[:, :, self.state_names.index(name)]
        raise SimulationError(f"no output or state named '{name}'; outputs: {', '.join(self.outputs)}")

    def to_frame(self, outputs: Sequence[str] | None = None, *, states: bool = False):
        """Tidy table with columns ID, TIME, output, value, unit.

        Parameters
        ----------
        outputs : sequence of str, optional
            Which outputs (default all).
        states : bool
            Also include compartment amounts.
        """
        import pandas as pd

        names = list(outputs) if outputs is not None else list(self.outputs)
        if states:
            names += list(self.state_names)
        nt, ns = len(self.times), len(self.ids)
        frames = []
        for name in names:
            values = self.output(name)
            frames.append(
                pd.DataFrame(
                    {
                        "ID": np.tile(self.ids, nt),
                        "TIME": np.repeat(self.times, ns),
                        "output": name,
                        "value": values.reshape(-1),
                        "unit": self.units[name],
                    }
                )
            )
        frame = (
            pd.concat(frames, ignore_index=True)
            if frames
            else pd.DataFrame(columns=["ID", "TIME", "output", "value", "unit"])
        )
        return frame.sort_values(["ID", "output", "TIME"], kind="stable").reset_index(drop=True)

    def wide(self):
        """Table with one row per subject and time and one column per output."""
        import pandas as pd

        nt, ns = len(self.times), len(self.ids)
        data = {"ID": np.tile(self.ids, nt), "TIME": np.repeat(self.times, ns)}
        for name, values in self.outputs.items():
            data[name] = values.reshape(-1)
        return pd.DataFrame(data).sort_values(["ID", "TIME"], kind="stable").reset_index(drop=True)


# ------------------------------------------------------------------------------------------- inputs


def _subject_arguments(model: Model, parameters, weight) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Arguments matrix (n_args, n_subjects), ids and body weights from the user's parameter input."""
    import pandas as pd

    names = model.argument_names
    defaults = {
        **{k: p.value for k, p in model.parameters.items()},
        **{k: c.value for k, c in model.covariates.items()},
        **{k: i.default for k, i in model.inputs.items()},
    }
    if parameters is None:
        table: dict[str, np.ndarray] = {}
        ids = np.array([1])
    elif isinstance(parameters, pd.DataFrame):
        frame = parameters.reset_index(drop=True)
        if frame.empty:
            raise SimulationError("the parameter table has no rows; give one row per subject")
        ids = frame["ID"].to_numpy() if "ID" in frame.columns else np.arange(1, len(frame) + 1)
        if len(set(ids.tolist())) != len(ids):
            raise SimulationError("the parameter table has repeated IDs; give one row per subject")
        table = {c: frame[c].to_numpy(dtype=float) for c in frame.columns if c != "ID"}
    elif isinstance(parameters, Mapping):
        table = {k: np.atleast_1d(np.asarray(v, dtype=float)) for k, v in parameters.items() if k != "ID"}
        sizes = {len(v) for v in table.values()} - {1}
        if len(sizes) > 1:
            raise SimulationError(
                f"parameter arrays have different lengths {sorted(sizes)}; give one value per subject"
            )
        n = sizes.pop() if sizes else 1
        ids = np.atleast_1d(np.asarray(parameters["ID"])) if "ID" in parameters else np.arange(1, n + 1)
        if len(ids) != n:
            raise SimulationError("ID has a different length from the parameter arrays")
    else:
        raise SimulationError(
            "parameters must be None, a dict of name -> value(s), or a DataFrame with one row "
            f"per subject; got {type(parameters).__name__}"
        )
    allowed = set(names) | {"WT"}
    unknown = set(table) - allowed
    if unknown:
        raise SimulationError(
            f"unknown parameter(s) {', '.join(sorted(unknown))} for model {model.name}; known: {', '.join(names)}"
        )
    ns = len(ids)
    p = np.empty((len(names), ns))
    for i, name in enumerate(names):
        value = table.get(name, defaults[name])
        arr = np.broadcast_to(np.asarray(value, dtype=float), (ns,))
        if not np.all(np.isfinite(arr)):
            raise SimulationError(f"parameter {name} has non-finite values; give finite numbers")
        p[i] = arr
    for name, par in model.parameters.items():
        row = p[names.index(name)]
        bad = (row < par.lower) | (row > par.upper)
        if bad.any():
            raise SimulationError(
                f"parameter {name} = {row[bad][0]:g} lies outside its bounds [{par.lower:g}, {par.upper:g}] "
                f"(model {model.name}); pkmodel does not clamp: give a value inside the bounds"
            )
    if weight is not None:
        wt = np.atleast_1d(np.asarray(weight, dtype=float))
        if wt.ndim != 1 or (wt.size != ns and ns != 1 and wt.size != 1):
            raise SimulationError(f"weight has {wt.size} values for {ns} subjects; give one per subject")
        if ns == 1 and wt.size > 1:  # one parameter set, several weights: one subject per weight
            ns = wt.size
            p = np.repeat(p, ns, axis=1)
            ids = np.arange(1, ns + 1)
        wt = np.broadcast_to(wt, (ns,)).copy()
    elif "WT" in table:
        wt = np.broadcast_to(table["WT"], (ns,)).copy()
    else:
        # never the model's reference WT for mg/kg doses: a dose must not silently assume 70 kg
        # (_plan raises if the regimen has mg/kg doses; the covariate effects keep the reference value)
        wt = None
    if wt is not None and (not np.all(np.isfinite(wt)) or np.any(wt <= 0)):
        raise SimulationError("body weight must be a positive number of kg")
    if wt is not None and "WT" in model.covariates:
        p[names.index("WT")] = wt
    return p, ids, wt


@dataclass
class _Plan:
    """The events of one group of subjects that share event times."""

    boluses: list[tuple[float, int, np.ndarray]]  # time, state index, amounts (ns,)
    infusions: list[tuple[float, float, int, np.ndarray]]  # start, end, state index, rate (ns,)
    steady: list[tuple[float, int, np.ndarray, float, float, int]]  # time, state, amount, duration, ii, ss


def _plan(model: Model, regimen: Regimen, weight: np.ndarray | None) -> _Plan:
    bol, inf, ss = [], [], []
    index = {s: i for i, s in enumerate(model.state_names)}
    for event in regimen.expand():
        try:
            cmt = model.dose_compartment(event.compartment)
        except PkmodelError as exc:
            raise SimulationError(str(exc)) from None
        if event.unit == "mg/kg" and weight is None:
            raise SimulationError(
                f"the regimen doses {event.amount:g} mg/kg but no body weight was given: "
                "pass weight= (kg) or a WT parameter column (the model's reference weight is never used for doses)"
            )
        try:
            amount = np.asarray(model.dose_amount(event.amount, event.unit, cmt, weight), dtype=float)
        except PkmodelError as exc:
            raise SimulationError(str(exc)) from None
        amount = np.atleast_1d(amount)
        i = index[cmt]
        if isinstance(event, Infusion):
            duration = event.duration_h
            if event.ss:
                ss.append((event.time, i, amount, duration, event.ii, event.ss))
            inf.append((event.time, event.time + duration, i, amount / duration))
        else:
            if event.ss:
                ss.append((event.time, i, amount, 0.0, event.ii, event.ss))
            bol.append((event.time, i, amount))
    return _Plan(bol, inf, ss)


def _inputs_function(model: Model, inputs, ns: int) -> Callable[[float], dict[int, np.ndarray]] | None:
    if not inputs:
        return None
    names = model.argument_names
    funcs = {}
    for name, spec in inputs.items():
        if name not in model.inputs:
            raise SimulationError(
                f"'{name}' is not an input of model {model.name}; inputs: {', '.join(model.inputs) or 'none'}"
            )
        if callable(spec):
            funcs[names.index(name)] = spec
        else:
            try:
                tt, vv = (np.asarray(a, dtype=float) for a in spec)
            except (TypeError, ValueError):
                raise SimulationError(
                    f"input {name} must be a callable f(t) or a pair (times, values)"
                ) from None
            if tt.ndim != 1 or vv.shape[0] != len(tt) or np.any(np.diff(tt) <= 0):
                raise SimulationError(
                    f"input {name}: times must be increasing and match the values' first axis"
                )
            funcs[names.index(name)] = lambda t, tt=tt, vv=vv: _interp(t, tt, vv)

    def evaluate(t: float) -> dict[int, np.ndarray]:
        return {i: np.broadcast_to(np.asarray(f(t), dtype=float), (ns,)) for i, f in funcs.items()}

    return evaluate


def _interp(t: float, tt: np.ndarray, vv: np.ndarray) -> np.ndarray:
    if vv.ndim == 1:
        return np.interp(t, tt, vv)
    k = np.clip(np.searchsorted(tt, t) - 1, 0, len(tt) - 2)
    w = np.clip((t - tt[k]) / (tt[k + 1] - tt[k]), 0.0, 1.0)
    return vv[k] * (1 - w) + vv[k + 1] * w


# ------------------------------------------------------------------------------------ exact engine


class _Propagators:
    """Cached Φ(Δ) = e^{KΔ} and Γ(Δ) = ∫₀^Δ e^{Ks} ds for all subjects (batched)."""

    def __init__(self, K: np.ndarray):
        self.K = K
        ns, n, _ = K.shape
        self.aug = np.zeros((ns, 2 * n, 2 * n))
        self.aug[:, :n, :n] = K
        self.aug[:, :n, n:] = np.eye(n)
        self.n = n
        self.cache: dict[float, tuple[np.ndarray, np.ndarray]] = {}

    def __call__(self, delta: float) -> tuple[np.ndarray, np.ndarray]:
        key = round(delta, _ROUND)
        hit = self.cache.get(key)
        if hit is None:
            E = scipy.linalg.expm(self.aug * delta)
            hit = (E[:, : self.n, : self.n].copy(), E[:, : self.n, self.n :].copy())
            if len(self.cache) < 4096:
                self.cache[key] = hit
        return hit


def _apply(phi: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.einsum("sij,sj->si", phi, v)


def _exact_steady_state(
    prop: _Propagators,
    b: np.ndarray,
    i: int,
    amount: np.ndarray,
    duration: float,
    tau: float,
    include_b: bool,
    t: float,
) -> np.ndarray:
    ns, n = b.shape
    dose = np.zeros((ns, n))
    base = b if include_b else np.zeros_like(b)
    if duration == 0:
        dose[:, i] = amount
        phi, gam = prop(tau)
        m = _apply(phi, dose) + _apply(gam, base)
        M = phi
    else:
        rate = np.zeros((ns, n))
        rate[:, i] = amount / duration
        phi_d, gam_d = prop(duration)
        phi_r, gam_r = prop(tau - duration)
        m = _apply(phi_r, _apply(gam_d, base + rate)) + _apply(gam_r, base)
        M = np.einsum("sij,sjk->sik", phi_r, phi_d)
    A = np.eye(n)[None] - M
    try:
        cond = np.linalg.cond(A)
        if np.any(~np.isfinite(cond)) or np.any(cond > 1e14):
            raise np.linalg.LinAlgError
        return np.linalg.solve(A, m[..., None])[..., 0]
    except np.linalg.LinAlgError:
        raise SimulationError(
            f"steady state (SS dose at t={t:g} h, ii={tau:g} h) does not exist: the model does not eliminate the "
            "dosed drug, so amounts grow without bound; remove SS or add elimination"
        ) from None


def _timeline(plan: _Plan, times: np.ndarray) -> list[float]:
    points = {float(t) for t in times}
    points.update(t for t, _, _ in plan.boluses)
    for start, end, _, _ in plan.infusions:
        points.update((start, end))
    return sorted(points)


def _run_exact(model: Model, plan: _Plan, p: np.ndarray, times: np.ndarray) -> np.ndarray:
    num = model.numeric
    ns, n = p.shape[1], num.n_states
    K = num.rate_matrix(p)
    b = num.input_vector(p)
    prop = _Propagators(K)
    x = num.initial(p).T.copy()
    rate = np.zeros((ns, n))
    out = np.empty((len(times), ns, n))
    out_index = {float(t): k for k, t in enumerate(times)}
    bol = _by_time((t, (i, a)) for t, i, a in plan.boluses)
    starts = _by_time((s, (i, r)) for s, _, i, r in plan.infusions)
    ends = _by_time((e, (i, r)) for _, e, i, r in plan.infusions)
    steady = _by_time((t, tuple(rest)) for t, *rest in plan.steady)
    t_now = 0.0
    for t in _timeline(plan, times):
        if t > t_now:
            phi, gam = prop(t - t_now)
            x = _apply(phi, x) + _apply(gam, b + rate)
            t_now = t
        for i, amount, duration, tau, flag in steady.get(t, ()):
            xss = _exact_steady_state(prop, b, i, amount, duration, tau, flag == 1, t)
            x = xss if flag == 1 else x + xss
            # an SS infusion from the previous interval is over by now (duration <= ii)
        for i, r in ends.get(t, ()):
            rate[:, i] -= r
        for i, a in bol.get(t, ()):
            x[:, i] += a
        for i, r in starts.get(t, ()):
            rate[:, i] += r
        k = out_index.get(t)
        if k is not None:
            out[k] = x
    return out


def _by_time(items) -> dict[float, list]:
    table: dict[float, list] = {}
    for t, payload in items:
        table.setdefault(float(t), []).append(payload if isinstance(payload, tuple) else (payload,))
    return table


# -------------------------------------------------------------------------------------- ODE engine


class _Stacked:
    """Right-hand side and sparse Jacobian of ns subjects stacked subject-major (s*n + i)."""

    def __init__(self, model: Model, p: np.ndarray, inputs):
        self.num = model.numeric
        self.p = p.copy()
        self.inputs = inputs
        self.ns = p.shape[1]
        self.n = self.num.n_states
        self.rate = np.zeros((self.ns, self.n))
        idx = self.num._jac_index
        s = np.arange(self.ns)[:, None]
        self.rows = (s * self.n + np.array([i for i, _ in idx], dtype=int)[None, :]).ravel()
        self.cols = (s * self.n + np.array([j for _, j in idx], dtype=int)[None, :]).ravel()

    def _args(self, t: float) -> np.ndarray:
        if self.inputs is None:
            return self.p
        p = self.p.copy()
        for i, v in self.inputs(t).items():
            p[i] = v
        return p

    def fun(self, t: float, y: np.ndarray) -> np.ndarray:
        x = y.reshape(self.ns, self.n).T
        return (self.num.rhs(t, x, self._args(t)).T + self.rate).ravel()

    def jac(self, t: float, y: np.ndarray):
        x = y.reshape(self.ns, self.n).T
        vals = self.num._jac(t, *x, *self._args(t))  # (nnz, ns)
        if self.ns * self.n <= 64:
            J = np.zeros((self.ns * self.n, self.ns * self.n))
            J[self.rows, self.cols] = vals.T.ravel()
            return J
        return scipy.sparse.csc_matrix(
            (vals.T.ravel(), (self.rows, self.cols)), shape=(self.ns * self.n, self.ns * self.n)
        )


def _integrate(
    system: _Stacked,
    t0: float,
    t1: float,
    y: np.ndarray,
    t_eval: list[float],
    method: str,
    rtol: float,
    atol: float,
) -> tuple[np.ndarray, list[np.ndarray]]:
    if t1 <= t0:
        return y, [y.copy() for _ in t_eval]
    try:
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            sol = solve_ivp(
                system.fun,
                (t0, t1),
                y,
                method=method,
                jac=system.jac,
                rtol=rtol,
                atol=atol,
                t_eval=sorted({*t_eval, t1}),
            )
    except (RuntimeError, np.linalg.LinAlgError, ValueError) as exc:
        raise SimulationError(
            f"the ODE solver failed between t={t0:g} h and t={t1:g} h ({exc}); the model may be diverging or "
            "its parameters extreme: check them, or try method='Radau'"
        ) from None
    if sol.status != 0 or not np.all(np.isfinite(sol.y)):
        raise SimulationError(
            f"the ODE solver failed between t={t0:g} h and t={t1:g} h ({sol.message}); the model may be "
            "diverging or too stiff for these tolerances: check the parameters, or tighten rtol/atol"
        )
    ys = sol.y.T
    return ys[-1].copy(), [ys[k] for k in range(len(t_eval))]


def _run_ode(
    model: Model, plan: _Plan, p: np.ndarray, times: np.ndarray, inputs, method: str, rtol: float, atol: float
) -> np.ndarray:
    system = _Stacked(model, p, inputs)
    ns, n = system.ns, system.n
    y = model.numeric.initial(p).T.reshape(-1).copy()
    out = np.empty((len(times), ns, n))
    out_index = {float(t): k for k, t in enumerate(times)}
    bol = _by_time((t, (i, a)) for t, i, a in plan.boluses)
    starts = _by_time((s, (i, r)) for s, _, i, r in plan.infusions)
    ends = _by_time((e, (i, r)) for _, e, i, r in plan.infusions)
    steady = _by_time((t, tuple(rest)) for t, *rest in plan.steady)
    event_times = sorted({*bol, *starts, *ends, *steady})
    checkpoints = sorted({0.0, *event_times, float(times[-1])})
    t_now = 0.0
    for t_c in checkpoints:
        if t_c > t_now:
            seg_out = [float(t) for t in times if t_now < t <= t_c]
            y, values = _integrate(system, t_now, t_c, y, seg_out, method, rtol, atol)
            for tk, v in zip(seg_out, values, strict=True):
                out[out_index[tk]] = v.reshape(ns, n)
            t_now = t_c
        x = y.reshape(ns, n).copy()
        for i, amount, duration, tau, flag in steady.get(t_c, ()):
            xss = _ode_steady_state(system, x, i, amount, duration, tau, flag, t_c, method, rtol, atol)
            x = xss if flag == 1 else x + xss
        for i, r in ends.get(t_c, ()):
            system.rate[:, i] -= r
        for i, a in bol.get(t_c, ()):
            x[:, i] += a
        for i, r in starts.get(t_c, ()):
            system.rate[:, i] += r
        y = x.reshape(-1)
        if t_c in out_index:
            out[out_index[t_c]] = x
    return out


def _ode_steady_state(
    system: _Stacked,
    x: np.ndarray,
    i: int,
    amount: np.ndarray,
    duration: float,
    tau: float,
    flag: int,
    t: float,
    method: str,
    rtol: float,
    atol: float,
) -> np.ndarray:
    """Pre-dose steady state of a repeated dose, by iterating the one-interval map to convergence."""
    ns, n = x.shape
    saved_rate = system.rate.copy()
    system.rate[:] = 0.0
    state = x.copy() if flag == 1 else np.zeros_like(x)
    try:
        for _ in range(2000):
            y = state.copy()
            if duration == 0:
                y[:, i] += amount
                y_end, _ = _integrate(system, t, t + tau, y.reshape(-1), [], method, rtol, atol)
            else:
                system.rate[:, i] = amount / duration
                y_mid, _ = _integrate(system, t, t + duration, y.reshape(-1), [], method, rtol, atol)
                system.rate[:, i] = 0.0
                y_end, _ = _integrate(system, t + duration, t + tau, y_mid, [], method, rtol, atol)
            new = y_end.reshape(ns, n)
            if np.allclose(new, state, rtol=rtol * 10, atol=atol * 10):
                return new
            state = new
    finally:
        system.rate[:] = saved_rate
    raise SimulationError(
        f"steady state for the SS dose at t={t:g} h was not reached after 2000 intervals; the system may "
        "accumulate without bound: remove SS or check elimination"
    )


# --------------------------------------------------------------------------------------------- API


def simulate(
    model: Model | str,
    regimen: Regimen | Mapping[Any, Regimen] | None,
    times: Sequence[float] | np.ndarray,
    *,
    parameters: Mapping[str, Any] | Any = None,
    weight: float | np.ndarray | None = None,
    inputs: Mapping[str, Any] | None = None,
    engine: str = "auto",
    method: str = "BDF",
    rtol: float = 1e-8,
    atol: float = 1e-10,
    outputs: Sequence[str] | None = None,
    keep_states: bool = True,
) -> SimulationResult:
    """Simulate a model under a regimen for one or many subjects.

    Parameters
    ----------
    model : Model or str
        A loaded model or the name/path of a model file.
    regimen : Regimen, mapping of subject ID to Regimen, or None
        Doses. One regimen for all subjects, or one per subject ID (subjects with the same event
        times are simulated together).  None simulates from the initial conditions only.
    times : array_like, shape (n_times,)
        Output times, h, >= 0, strictly increasing.
    parameters : dict or DataFrame, optional
        Parameter and covariate values: a dict of name -> scalar or array (n_subjects,), or a
        DataFrame with one row per subject (optional ``ID`` column).  Missing names take the model's
        values.  A ``WT`` column (kg) is used for mg/kg doses.
    weight : float or ndarray, optional
        Body weight, kg, for mg/kg doses (overrides WT).
    inputs : dict, optional
        External inputs: name -> callable ``f(t)`` (scalar or (n_subjects,)) or ``(times, values)``
        for linear interpolation.
    engine : {"auto", "exact", "hybrid", "ode"}
        ``"auto"`` uses the exact engine for linear models without time-varying inputs, the hybrid
        engine for nonlinear models with a closed linear subsystem (e.g. linear PK driving a nonlinear
        PD model; see :mod:`pkmodel._hybrid`), and the ODE engine otherwise.
    method : str
        solve_ivp method of the ODE engine: ``"BDF"`` (default, fastest on the stiff PK/PD models),
        ``"Radau"`` (implicit Runge–Kutta; use it for very tight tolerances, rtol < 1e-10) or ``"LSODA"``.
    rtol, atol : float
        ODE tolerances.
    outputs : sequence of str, optional
        Compute only these outputs (default all); ``result.outputs`` then holds only them.
    keep_states : bool
        Keep the amounts of every state (``result.states``, n_times × n_subjects × n_states doubles:
        0.84 MB per subject for 26 states at 4033 times).  With False, ``result.states`` has shape
        ``(n_times, n_subjects, 0)`` and the hybrid engine never forms the state array: for large
        populations pass the outputs you need and ``keep_states=False`` (several times faster, and
        memory O(n_times · n_subjects · n_outputs)).  The negative-amount check (``result.warnings``)
        then looks at the nonlinear states at every solver step and the linear ones at every event.

    Returns
    -------
    SimulationResult

    Raises
    ------
    SimulationError
        Unknown parameter names, values outside bounds, bad times, a mg/kg dose without weight,
        the exact engine asked for a nonlinear model, an unknown output name, or a solver failure.

    Examples
    --------
    >>> from pkmodel import load_model, simulate, q3w
    >>> m = load_model("two_compartment_iv")
    >>> r = simulate(m, q3w(10, cycles=2, unit="mg"), times=[0, 1, 504, 505])
    >>> r.output("CP").shape
    (4, 1)
    >>> lean = simulate(m, q3w(10, cycles=2, unit="mg"), times=[0, 1], outputs=["CP"], keep_states=False)
    >>> list(lean.outputs), lean.states.shape
    (['CP'], (2, 1, 0))
    """
    if isinstance(model, str):
        from .model import load_model

        model = load_model(model)
    t = np.asarray(times, dtype=float)
    if t.ndim != 1 or t.size == 0:
        raise SimulationError("times must be a non-empty 1-D sequence of hours")
    if not np.all(np.isfinite(t)) or t[0] < 0 or np.any(np.diff(t) <= 0):
        raise SimulationError("times must be finite, >= 0 and strictly increasing (h)")
    if outputs is None:
        names = tuple(model.outputs)
    else:
        names = tuple([outputs] if isinstance(outputs, str) else outputs)
        unknown = [o for o in names if o not in model.outputs]
        if unknown:
            raise SimulationError(
                f"unknown output(s) {', '.join(map(str, unknown))} of model {model.name}; "
                f"outputs: {', '.join(model.outputs)}"
            )
    if engine not in ("auto", "exact", "ode", "hybrid"):
        raise SimulationError(f"engine must be 'auto', 'exact', 'hybrid' or 'ode', not {engine!r}")
    p, ids, wt = _subject_arguments(model, parameters, weight)
    ns = len(ids)
    input_fn = _inputs_function(model, inputs, ns)
    varying_inputs = input_fn is not None
    if engine == "auto":
        if model.is_linear:
            engine = "exact" if not varying_inputs else "ode"
        else:
            engine = "hybrid" if linear_subsystem(model).usable and not varying_inputs else "ode"
    if engine == "hybrid":
        split = linear_subsystem(model)
        if not split.usable:
            what = (
                "no nonlinear states (use engine='exact')" if not split.nonlinear else "no linear subsystem"
            )
            why = "; ".join(f"{k}: {v}" for k, v in split.reasons.items())
            raise SimulationError(
                f"the hybrid engine needs a closed linear subsystem and a nonlinear rest; model {model.name} has "
                f"{what}{f' ({why})' if why else ''}. Use engine='ode'."
            )
        if varying_inputs:
            raise SimulationError("the hybrid engine cannot take time-varying inputs; use engine='ode'")
    if engine == "exact" and not model.is_linear:
        raise SimulationError(
            f"the exact engine needs a linear model; {model.name} is nonlinear: "
            + "; ".join(model.linearity.reasons)
            + ". Use engine='ode'."
        )
    if engine == "exact" and varying_inputs:
        raise SimulationError("the exact engine cannot take time-varying inputs; use engine='ode'")

    # group subjects by regimen
    if regimen is None:
        groups = [(np.arange(ns), Regimen())]
    elif isinstance(regimen, Regimen):
        groups = [(np.arange(ns), regimen)]
    elif isinstance(regimen, Mapping):
        missing = [i for i in ids.tolist() if i not in regimen]
        if missing:
            raise SimulationError(f"no regimen for subject(s) {missing[:5]}; give one per ID")
        by_key: dict[Any, list[int]] = {}
        for k, sid in enumerate(ids.tolist()):
            reg = regimen[sid]
            key = tuple(
                (type(e).__name__, e.time, e.compartment, e.unit, getattr(e, "duration_h", 0.0), e.ss, e.ii)
                for e in reg.expand()
            )
            by_key.setdefault(key, []).append(k)
        groups = [
            (np.array(v), regimen[ids[v[0]].item() if hasattr(ids[v[0]], "item") else ids[v[0]]])
            for v in by_key.values()
        ]
        # amounts may differ within a group: plan per group uses each member's own regimen
    else:
        raise SimulationError("regimen must be a Regimen, a mapping of ID -> Regimen, or None")

    num = model.numeric
    nt, n_states = len(t), num.n_states
    states = np.empty((nt, ns, n_states)) if keep_states else np.empty((nt, ns, 0))
    values = {name: np.empty((nt, ns)) for name in names}
    extremes: Extremes | None = None

    def record(members: np.ndarray, group_states: np.ndarray) -> Extremes:
        """Outputs of a group from its amounts (n_times, n_group, n_states); keep them if asked."""
        if keep_states:
            states[:, members] = group_states
        pb = p[:, None, members]
        if input_fn is not None:
            pb = np.broadcast_to(pb, (p.shape[0], nt, len(members))).copy()
            for k, tk in enumerate(t):
                for i, v in input_fn(tk).items():
                    pb[i, k] = v[members]
        with np.errstate(divide="ignore", invalid="ignore"):  # e.g. mean DAR before the first dose is 0/0
            group = num.outputs(t[:, None], np.moveaxis(group_states, 2, 0), pb, names=names)
        for k, name in enumerate(names):
            values[name][:, members] = group[k]
        return Extremes.of_states(group_states, t, members, floor=-10 * atol)

    for members, reg in groups:
        w = None if wt is None else wt[members]
        if isinstance(regimen, Mapping):
            plans = [
                _plan(
                    model,
                    regimen[ids[k].item() if hasattr(ids[k], "item") else ids[k]],
                    None if w is None else w[j : j + 1],
                )
                for j, k in enumerate(members)
            ]
            plan = _merge_plans(plans)
        else:
            plan = _plan(model, reg, w)
            plan = _broadcast_plan(plan, len(members))
        sub_p = p[:, members]
        whole = len(members) == ns
        if engine == "exact":
            found = record(members, _run_exact(model, plan, sub_p, t))
        elif engine == "hybrid" and not plan.steady:

            def ode(idx, plan=plan, sub_p=sub_p):
                return _run_ode(model, _subset_plan(plan, idx), sub_p[:, idx], t, None, method, rtol, atol)

            target = None
            if keep_states:  # one group: write in place (the state array can be large)
                target = states if whole else np.empty((nt, len(members), n_states))
            with np.errstate(divide="ignore", invalid="ignore"):
                group, found = run_hybrid(
                    model, plan.boluses, plan.infusions, sub_p, t, rtol, atol, ode, names, out=target
                )
            if keep_states and not whole:
                states[:, members] = target
            for name in names:
                if whole:
                    values[name] = group[name]
                else:
                    values[name][:, members] = group[name]
            if not whole:
                found = Extremes(found.low, found.time, members[found.subject], found.high)
        else:
            sub_inputs = None
            if input_fn is not None:

                def sub_inputs(tt, f=input_fn, m=members):
                    return {i: v[m] for i, v in f(tt).items()}

            found = record(members, _run_ode(model, plan, sub_p, t, sub_inputs, method, rtol, atol))
        extremes = found if extremes is None else extremes.merge(found)

    units = {name: q.unit for name, q in model.outputs.items()}
    units.update({name: c.unit for name, c in model.compartments.items()})
    warnings = _negative_amounts(extremes, model.state_names, atol)
    info = {"warnings": warnings, "states_kept": keep_states}
    return SimulationResult(t, ids, values, states, units, model.state_names, engine, info)


def _negative_amounts(extremes: Extremes, names: tuple[str, ...], atol: float) -> tuple[str, ...]:
    """Messages for compartments whose amounts went below zero beyond the solver tolerance.

    The limit is −(10·atol + 1e-7·scale), scale the state's largest |amount| over times and subjects.
    """
    out = []
    limit = -(10 * atol + 1e-7 * extremes.high)
    for i in np.flatnonzero(extremes.low < limit):
        out.append(
            f"compartment {names[i]} went negative ({extremes.low[i]:.3g} at t={extremes.time[i]:g} h, subject "
            f"index {int(extremes.subject[i])}): amounts cannot be negative; tighten rtol/atol or check the "
            "model's rates and parameters"
        )
    return tuple(out)


def _broadcast_plan(plan: _Plan, ns: int) -> _Plan:
    def b(a):
        return np.broadcast_to(a, (ns,)).copy()

    return _Plan(
        [(t, i, b(a)) for t, i, a in plan.boluses],
        [(s, e, i, b(r)) for s, e, i, r in plan.infusions],
        [(t, i, b(a), d, tau, f) for t, i, a, d, tau, f in plan.steady],
    )


def _subset_plan(plan: _Plan, idx: np.ndarray) -> _Plan:
    """The plan of some members of a group only."""
    return _Plan(
        [(t, i, a[idx]) for t, i, a in plan.boluses],
        [(s, e, i, r[idx]) for s, e, i, r in plan.infusions],
        [(t, i, a[idx], d, tau, f) for t, i, a, d, tau, f in plan.steady],
    )


def _merge_plans(plans: list[_Plan]) -> _Plan:
    first = plans[0]
    return _Plan(
        [
            (t, i, np.concatenate([p.boluses[k][2] for p in plans]))
            for k, (t, i, _) in enumerate(first.boluses)
        ],
        [
            (s, e, i, np.concatenate([p.infusions[k][3] for p in plans]))
            for k, (s, e, i, _) in enumerate(first.infusions)
        ],
        [
            (t, i, np.concatenate([p.steady[k][2] for p in plans]), d, tau, f)
            for k, (t, i, _, d, tau, f) in enumerate(first.steady)
        ],
    )
