"""Hybrid engine: a model's closed linear subsystem solved exactly, the rest by adaptive Runge–Kutta.

Most PK/PD models this project runs are a linear pharmacokinetic system driving a small nonlinear
pharmacodynamic one (the DAR-resolved ADC model driving Friberg neutropenia: 21 linear PK states, 5
nonlinear PD states).  The PK states do not depend on the PD states, so they can be solved exactly
while only the PD states are integrated numerically, with the PK solution as an input known exactly
at any time.

**Detection** (:func:`linear_subsystem`), from the symbols only: a state belongs to the *linear
subsystem* L when its derivative is affine in the amounts with coefficients free of amounts, time and
external inputs, and depends only on states of L (closure: the largest such set, found by removing
offending states until none is left).  The other states form the nonlinear part N; the states of L
that appear in the derivatives of N are the *coupling* states J.

**Linear part.**  With K and b of dA_L/dt = K·A_L + b + (infusion rates), per subject
K = V·diag(λ)·V⁻¹ and in modal coordinates z = V⁻¹·A_L every mode evolves on its own between events:
z(t+τ) = e^{λτ}·z(t) + φ(λ, τ)·v with v = V⁻¹·(b + rates) and φ(λ, τ) = (e^{λτ} − 1)/λ (τ when
λ = 0).  Boluses are jumps of z, infusions change v.  This is exact (to rounding); subjects whose V is
ill-conditioned (cond > 1e8, e.g. a defective K with ka = k) are handed to the ODE engine instead.
The input that N needs, A_J(t) = V_J·z(t), is a sum over only the modes that are both reachable from
the doses (and b, and the initial state) and seen by J: for the ADC model with DAR-independent
clearance the free SN-38 sees 4–6 of the 21 modes (the conjugated SN-38 is exactly lumpable; the
others come out of the eigendecomposition with shares at rounding level and are left out).

**Nonlinear part.**  The stacked N states of all subjects are integrated by the Dormand–Prince
8(5,3) method (DOP853, the tableau of :class:`scipy.integrate.DOP853`) with one adaptive step shared by
all subjects: the error norm of each subject is scipy's DOP853 norm over its N states with scale
atol + rtol·max(|y|, |y_new|), and the maximum over subjects must be <= 1.  Steps stop at every dose
and infusion boundary; outputs between steps come from the method's 7th-order dense output (three
extra stages).  Step sizes are kept on the ladder 2^(k/8) h so that the stage propagators e^{λ·c·h}
can be cached.  Expressions of N that depend on parameters only are hoisted and computed once per
subject, and dN/dt is evaluated as A·N + g: the terms linear in the N states with per-subject constant
coefficients as diagonals of A (the Friberg transit chain is two array operations over all its states),
the rest g only where it is not zero.  If the N part turns out stiff (Hairer's test h·ρ > 6.1 on 15
accepted steps) the subjects whose own h·ρ was above the bound are handed to the ODE engine, which is
implicit, and the others are integrated again without them (at most 3 times, and only while they are
at most a quarter of the group; otherwise the whole group is handed over): one extreme patient does
not send a chunk of a thousand to the implicit solver.  ``rtol`` bounds the local error per step; the
global error of a long run is typically 10–20 × rtol.

**Outputs** (``simulate(..., outputs=..., keep_states=False)``, :func:`simulate_outputs`): an output
that is linear in the linear states (TAb, ADC, SN38) is one row c of coefficients,
c·A_L(t) = (c·V)·z(t), evaluated in modal form over the modes it sees without forming the state array;
others are evaluated from the states they reference, and only the nonlinear states an output needs are
kept at the output times.  The negative-amount check then uses what is computed anyway
(:class:`Extremes`): the nonlinear states at every accepted step and the linear ones at every event.

References
----------
Hairer E, Nørsett SP, Wanner G. Solving Ordinary Differential Equations I, 2nd ed. Springer 1993,
sections II.5 and II.6 (DOP853 and its dense output) and IV.2 (stiffness detection).
doi:10.1007/978-3-540-78862-1

Examples
--------
>>> from pkmodel import load_model
>>> sub = linear_subsystem(load_model("adc_esg401_friberg"))
>>> len(sub.linear), sub.nonlinear, sub.coupling
(21, ('PROL', 'TRANSIT1', 'TRANSIT2', 'TRANSIT3', 'CIRC'), ('SN38_C',))
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import sympy
from scipy.integrate import DOP853

from .expressions import TIME_SYMBOL
from .numerics import _MODULES, _prepare, _VectorFunction

__all__ = ["Extremes", "LinearSubsystem", "linear_subsystem", "simulate_outputs"]

_COND_MAX = 1e8  # largest condition number of V accepted (error ~ cond * 1e-16)
_RELEVANT = 1e-9  # modes whose share of the input is below min(this, rtol/100) (relative) are left out
_LADDER = 8  # step sizes 2**(k/_LADDER) h (finer than 4: 3 % fewer steps, cache still hit)
_SAFETY, _MIN_FACTOR, _MAX_FACTOR = 0.9, 0.2, 10.0
_MAX_STEPS = 100_000  # more shared steps than this: hand the group to the (implicit) ODE engine
# a group turns stiff because of a few of its subjects: those go to the ODE engine and the others are
# integrated again without them, at most this many times, and only while the culprits are at most this
# share of the group (otherwise the whole group goes)
_ISOLATION_ROUNDS, _ISOLATION_SHARE = 3, 0.25
_BLOCK = 1_000_000  # elements per temporary when reconstructing the linear part


class _Stiff(Exception):
    """The nonlinear part is stiff: the explicit method would crawl (internal signal).

    ``culprits``: positions (within the run's subjects) of the subjects that made it so, when they can
    be told apart from the others (their own stiffness ratio h·ρ was above the bound, or they alone
    failed the last step); ``None`` when the whole group is at fault.
    """

    def __init__(self, culprits: np.ndarray | None = None):
        super().__init__()
        self.culprits = culprits


# ------------------------------------------------------------------------------------------- detection


@dataclass(frozen=True)
class LinearSubsystem:
    """The split of a model's states into a closed linear subsystem and the rest.

    Attributes
    ----------
    linear : tuple of str
        States of the closed linear subsystem L (model state order).
    nonlinear : tuple of str
        The other states N.
    coupling : tuple of str
        States of L that appear in the derivatives of N.
    reasons : dict of str to str
        For every state of N, why it is not in L.
    """

    linear: tuple[str, ...]
    nonlinear: tuple[str, ...]
    coupling: tuple[str, ...]
    reasons: dict[str, str] = field(default_factory=dict)

    @property
    def usable(self) -> bool:
        """True when both parts are non-empty (a linear model needs no split; a wholly nonlinear one has none)."""
        return bool(self.linear) and bool(self.nonlinear)


_DETECTED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def linear_subsystem(model) -> LinearSubsystem:
    """Find the largest closed linear subsystem of a model.

    A state is in it when dA/dt is affine in the amounts with coefficients that depend on parameters
    and covariates only (not on amounts, time or external inputs), and every amount it depends on is
    in the subsystem too.

    Parameters
    ----------
    model : Model

    Returns
    -------
    LinearSubsystem

    Examples
    --------
    >>> from pkmodel import load_model
    >>> sub = linear_subsystem(load_model("one_compartment_oral_mm"))
    >>> sub.linear, sub.nonlinear
    (('DEPOT',), ('CENT',))
    >>> sub.reasons["CENT"]
    'dA/dt is not linear in CENT'
    """
    hit = _DETECTED.get(model)
    if hit is not None:
        return hit
    names = model.state_names
    symbols = {name: model.symbols[name] for name in names}
    state_set = set(symbols.values())
    forbidden = {TIME_SYMBOL, *(model.symbols[i] for i in model.inputs)}
    reasons: dict[str, str] = {}
    linear: list[str] = []
    for name in names:
        expr = model.rhs_exprs[name]
        bad = expr.free_symbols & forbidden
        if bad:
            reasons[name] = f"dA/dt depends on {', '.join(sorted(str(s) for s in bad))}"
            continue
        curved = [
            other
            for other in names
            if symbols[other] in expr.free_symbols
            and sympy.diff(expr, symbols[other]).free_symbols & (state_set | forbidden)
        ]
        if curved:
            reasons[name] = f"dA/dt is not linear in {', '.join(curved)}"
            continue
        linear.append(name)
    members = set(linear)
    changed = True
    while changed:
        changed = False
        for name in [n for n in names if n in members]:
            outside = [
                o for o in names if symbols[o] in model.rhs_exprs[name].free_symbols and o not in members
            ]
            if outside:
                members.discard(name)
                reasons[name] = f"dA/dt depends on {', '.join(outside)}, which is not in the linear subsystem"
                changed = True
    lin = tuple(n for n in names if n in members)
    non = tuple(n for n in names if n not in members)
    coupling = tuple(n for n in lin if any(symbols[n] in model.rhs_exprs[m].free_symbols for m in non))
    result = LinearSubsystem(lin, non, coupling, {n: reasons[n] for n in non})
    _DETECTED[model] = result
    return result


# -------------------------------------------------------------------------------------------- numerics


def _hoist(exprs: list[sympy.Expr], varying: set[sympy.Symbol]) -> tuple[list[sympy.Expr], list[tuple]]:
    """Replace every maximal subexpression free of ``varying`` symbols by a new symbol.

    Returns the rewritten expressions and the (symbol, expression) pairs of the constants, which are
    computed once per subject instead of at every right-hand-side evaluation.
    """
    memo: dict[sympy.Expr, sympy.Symbol] = {}
    consts: list[tuple[sympy.Symbol, sympy.Expr]] = []

    def constant(e: sympy.Expr) -> sympy.Expr:
        if e.is_Symbol or e.is_Number or not e.free_symbols:
            return e
        if e not in memo:
            memo[e] = sympy.Symbol(f"_hoisted{len(consts)}")
            consts.append((memo[e], e))
        return memo[e]

    def visit(e: sympy.Expr) -> sympy.Expr:
        if not e.free_symbols & varying:
            return constant(e)
        if e.is_Add or e.is_Mul:
            fixed = [a for a in e.args if not a.free_symbols & varying]
            moving = [visit(a) for a in e.args if a.free_symbols & varying]
            if len(fixed) > 0:
                moving.insert(0, constant(e.func(*fixed)))
            return e.func(*moving, evaluate=False) if len(moving) > 1 else moving[0]
        if not e.args:
            return e
        return e.func(*[visit(a) for a in e.args])

    return [visit(e) for e in exprs], consts


class _System:
    """Generated numerics of the split model: K_L, b_L, hoisted constants and the N right-hand side."""

    def __init__(self, model, sub: LinearSubsystem):
        index = {s: i for i, s in enumerate(model.state_names)}
        self.lin = np.array([index[s] for s in sub.linear], dtype=int)
        self.non = np.array([index[s] for s in sub.nonlinear], dtype=int)
        self.coupling = [sub.linear.index(s) for s in sub.coupling]
        args = [model.symbols[a] for a in model.argument_names]
        lin_syms = [model.symbols[s] for s in sub.linear]
        rhs_l = sympy.Matrix([model.rhs_exprs[s] for s in sub.linear])
        K = rhs_l.jacobian(lin_syms)
        b = rhs_l.subs({x: 0 for x in lin_syms})
        n = len(lin_syms)
        self.k_index = [(i, j) for i in range(n) for j in range(n) if K[i, j] != 0]
        self._k = _VectorFunction(args, [K[i, j] for i, j in self.k_index])
        self._b = _VectorFunction(args, list(b))
        non_syms = [model.symbols[s] for s in sub.nonlinear]
        coup_syms = [model.symbols[s] for s in sub.coupling]
        exprs, consts = _hoist(
            [model.rhs_exprs[s] for s in sub.nonlinear], {TIME_SYMBOL, *non_syms, *coup_syms}
        )
        self._consts = _VectorFunction(args, [e for _, e in consts]) if consts else None
        used = set().union(*(e.free_symbols for e in exprs)) if exprs else set()
        self.used_args = [k for k, a in enumerate(args) if a in used]
        call_args = [TIME_SYMBOL, *non_syms, *coup_syms, *(args[k] for k in self.used_args)]
        call_args += [s for s, _ in consts]
        self._rhs = sympy.lambdify(call_args, [_prepare(e) for e in exprs], modules=_MODULES, cse=True)
        self.n_lin, self.n_non = n, len(non_syms)
        # dN/dt = A·N + g: the terms linear in the N states with constant (per subject) coefficients, as
        # diagonals of A (a transit chain is two vectorised operations over all its states instead of
        # two per state), and the remainder g only where it is not zero
        varying = {TIME_SYMBOL, *non_syms, *coup_syms}
        entries: dict[int, dict[int, sympy.Expr]] = {}  # offset j − i -> {row i: coefficient}
        remainders: list[tuple[int, sympy.Expr]] = []
        for i, e in enumerate(exprs):
            terms = {}
            for j, y in enumerate(non_syms):
                if y in e.free_symbols:
                    d = sympy.diff(e, y)
                    if not d.free_symbols & varying:
                        terms[j] = d
            rest = e - sum((c * non_syms[j] for j, c in terms.items()), sympy.Integer(0))
            if rest != 0 and terms and sympy.expand(rest) == 0:
                rest = sympy.Integer(0)
            for j, c in terms.items():
                entries.setdefault(j - i, {})[i] = c
            if rest != 0:
                remainders.append((i, rest))
        self.banded: list[tuple[int, int, int]] = []  # (offset, first row, last row + 1)
        coefs: list[sympy.Expr] = []
        if entries:
            entries.setdefault(0, {})
            for d in sorted(entries, key=lambda d: (d != 0, d)):
                rows = entries[d]
                lo, hi = (0, self.n_non) if d == 0 else (min(rows), max(rows) + 1)
                self.banded.append((d, lo, hi))
                coefs += [rows.get(i, sympy.Integer(0)) for i in range(lo, hi)]
        fixed_syms = [*(args[k] for k in self.used_args), *(sym for sym, _ in consts)]
        self._coefficients = _VectorFunction(fixed_syms, coefs) if coefs else None
        self.remainder_rows = [i for i, _ in remainders]
        self._remainder = (
            sympy.lambdify(call_args, [_prepare(e) for _, e in remainders], modules=_MODULES, cse=True)
            if remainders
            else None
        )

        self._outputs: dict[tuple[str, ...], _OutputPlan] = {}

    def output_plan(self, model, names: tuple[str, ...]) -> _OutputPlan:
        hit = self._outputs.get(names)
        if hit is None:
            hit = self._outputs[names] = _OutputPlan(model, self, names)
        return hit

    def rate_matrix(self, p: np.ndarray) -> np.ndarray:
        vals = self._k(*p, batch=p.shape[1:])
        out = np.zeros((p.shape[1], self.n_lin, self.n_lin))
        for k, (i, j) in enumerate(self.k_index):
            out[:, i, j] = vals[k]
        return out

    def input_vector(self, p: np.ndarray) -> np.ndarray:
        return self._b(*p, batch=p.shape[1:]).T  # (ns, n_lin)

    def fixed_arguments(self, p: np.ndarray) -> list[np.ndarray]:
        rows = [p[k] for k in self.used_args]
        if self._consts is not None:
            rows += list(self._consts(*p, batch=p.shape[1:]))
        return rows


class _OutputPlan:
    """How to compute some outputs: linear in the linear states (coefficient rows) or from states."""

    def __init__(self, model, system: _System, names: tuple[str, ...]):
        sub = linear_subsystem(model)
        args = [model.symbols[a] for a in model.argument_names]
        lin_syms = [model.symbols[s] for s in sub.linear]
        non_syms = [model.symbols[s] for s in sub.nonlinear]
        states = set(lin_syms) | set(non_syms)
        self.linear: list[str] = []
        rows, offsets = [], []
        self.general = []
        for name in names:
            if name not in model.output_exprs:
                raise KeyError(name)
            expr = model.output_exprs[name]
            free = expr.free_symbols
            if not (free & set(non_syms)) and TIME_SYMBOL not in free:
                grads = [sympy.diff(expr, x) for x in lin_syms]
                if all(not (g.free_symbols & states) for g in grads):
                    self.linear.append(name)
                    rows.append(grads)
                    offsets.append(expr.subs({x: 0 for x in lin_syms}))
                    continue
            lin_used = [i for i, x in enumerate(lin_syms) if x in free]
            non_used = [i for i, x in enumerate(non_syms) if x in free]
            arg_used = [k for k, a in enumerate(args) if a in free]
            call = [TIME_SYMBOL, *(non_syms[i] for i in non_used), *(lin_syms[i] for i in lin_used)]
            call += [args[k] for k in arg_used]
            func = sympy.lambdify(call, _prepare(expr), modules=_MODULES, cse=True)
            self.general.append((name, func, lin_used, non_used, arg_used))
        self.n_lin = len(lin_syms)
        self.nonlinear_rows = sorted({j for *_, non_used, _ in self.general for j in non_used})
        self.index = [(k, i) for k, row in enumerate(rows) for i, g in enumerate(row) if g != 0]
        self._rows = _VectorFunction(args, [rows[k][i] for k, i in self.index]) if self.index else None
        self._offsets = _VectorFunction(args, offsets) if offsets else None

    def coefficients(self, p: np.ndarray) -> np.ndarray:
        out = np.zeros((p.shape[1], len(self.linear), self.n_lin))
        if self._rows is not None:
            vals = self._rows(*p, batch=p.shape[1:])
            for v, (k, i) in zip(vals, self.index, strict=True):
                out[:, k, i] = v
        return out

    def offsets(self, p: np.ndarray) -> np.ndarray:
        return self._offsets(*p, batch=p.shape[1:])  # (k, ns)


_SYSTEMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _system(model) -> _System:
    hit = _SYSTEMS.get(model)
    if hit is None:
        hit = _SYSTEMS[model] = _System(model, linear_subsystem(model))
    return hit


def _phi(lam: np.ndarray, tau) -> np.ndarray:
    """(e^{λτ} − 1)/λ, equal to τ at λ = 0, elementwise."""
    x = lam * tau
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(x == 0, 1.0, np.expm1(x) / np.where(x == 0, 1.0, x))
    return ratio * tau


# ------------------------------------------------------------------------------------------------ engine

# Dormand–Prince 8(5,3) (DOP853) with its 7th-order dense output: Hairer's coefficients as tabulated by
# scipy.integrate.DOP853.  Stage i (1..11) is at C[i]·h, the step's last derivative at h, the three extra
# stages of the dense output at C_EXTRA·h: the linear input is needed at these 14 fractions of a step.
_NS = DOP853.n_stages
_A, _B, _C = DOP853.A, DOP853.B, DOP853.C
_E3, _E5, _D = DOP853.E3, DOP853.E5, DOP853.D
_A_EXTRA, _C_EXTRA = DOP853.A_EXTRA, DOP853.C_EXTRA
_FRACTIONS = np.concatenate([_C[1:], _C_EXTRA])
_E53 = np.stack([_E5, _E3])
_LAST = _NS - 2  # index in _FRACTIONS of the stage at c = 1
_EXPONENT = -1.0 / (DOP853.error_estimator_order + 1)
# the stage coefficients with a leading column for y (set to 1 at use): row i < _NS gives stage i, row _NS
# the new state; the extra stages of the dense output likewise
_AUG = np.zeros((_NS + 1, _NS + 1))
_AUG[:_NS, 1:] = _A
_AUG[_NS, 1:] = _B
_AUG_EXTRA = np.zeros((3, _NS + 5))
_AUG_EXTRA[:, 1:] = _A_EXTRA


def _dense_basis() -> np.ndarray:
    """T (7, 7) with y(x) − y_old = Σ_j (T·F)_j x^(j+1) for scipy's nested DOP853 interpolant.

    scipy evaluates x·(F0 + (1−x)·(F1 + x·(F2 + (1−x)·(F3 + x·(F4 + (1−x)·(F5 + x·F6)))))); expanding
    each F_k's polynomial once turns the interpolation of many output times into a matrix product.
    """
    P = np.polynomial.Polynomial
    T = np.zeros((7, 7))
    for k in range(7):
        acc = P([0.0])
        for i in range(6, -1, -1):
            acc = acc + (1.0 if i == k else 0.0)
            acc = acc * (P([0.0, 1.0]) if (6 - i) % 2 == 0 else P([1.0, -1.0]))
        coef = acc.coef[1:]
        T[: len(coef), k] = coef
    return T


_DENSE = _dense_basis()
_STIFF = 6.1  # Hairer's bound on h·ρ for DOP853


class _Modes:
    """Eigendecomposition K = V·diag(λ)·V⁻¹ of every subject's rate matrix; flags ill-conditioned V."""

    def __init__(self, K: np.ndarray):
        lam, V = np.linalg.eig(K)  # (ns, m), (ns, n, m)
        with np.errstate(all="ignore"):
            cond = np.linalg.cond(V)
        self.good = np.isfinite(cond) & (cond <= _COND_MAX)
        self.cond = np.where(self.good, cond, 1.0)
        if not self.good.all():
            V = np.where(self.good[:, None, None], V, np.eye(K.shape[1]))
        self.complex = np.iscomplexobj(lam)
        self.lam, self.V = lam, V
        self.Vinv = np.linalg.inv(V)

    def subset(self, members: np.ndarray) -> _Modes:
        """The modes of some subjects only."""
        new = object.__new__(_Modes)
        new.good, new.complex, new.cond = self.good[members], self.complex, self.cond[members]
        new.lam, new.V, new.Vinv = self.lam[members], self.V[members], self.Vinv[members]
        return new


@dataclass
class Extremes:
    """Smallest and largest amounts of every state over a simulation, for the negative-amount check.

    Attributes
    ----------
    low : ndarray, shape (n_states,)
        Smallest amount over times and subjects.
    time : ndarray, shape (n_states,)
        When it occurred, h.
    subject : ndarray of int, shape (n_states,)
        Which subject (index into the subjects of the simulation).
    high : ndarray, shape (n_states,)
        Largest absolute amount over times and subjects (the scale of the state).
    """

    low: np.ndarray
    time: np.ndarray
    subject: np.ndarray
    high: np.ndarray

    @classmethod
    def of_candidates(
        cls, low: np.ndarray, when: np.ndarray, high: np.ndarray, members: np.ndarray | None = None
    ) -> Extremes:
        """From per-subject candidates ``low``, ``when``, ``high`` (n_states, ns); ``members`` maps subjects."""
        n, ns = low.shape
        if ns == 0:
            return cls(np.full(n, np.inf), np.zeros(n), np.zeros(n, dtype=int), np.zeros(n))
        k = np.argmin(low, axis=1)
        rows = np.arange(n)
        subject = k if members is None else np.asarray(members)[k]
        return cls(low[rows, k], when[rows, k], subject, high.max(axis=1))

    @classmethod
    def of_states(
        cls, states: np.ndarray, times: np.ndarray, members: np.ndarray | None = None, floor: float = 0.0
    ) -> Extremes:
        """From amounts (n_times, ns, n_states) at ``times``: one pass for the minima and maxima.

        Where and when the minimum occurred is located only for states whose minimum is below ``floor``
        (elsewhere 0 h and subject 0): a search over the whole array per state is costly.
        """
        nt, ns, n = states.shape
        if states.size == 0:
            return cls(np.full(n, np.inf), np.zeros(n), np.zeros(n, dtype=int), np.zeros(n))
        flat = states.reshape(-1, n)
        low, top = flat.min(axis=0), flat.max(axis=0)
        when, subject = np.zeros(n), np.zeros(n, dtype=int)
        for i in np.flatnonzero(low < min(floor, 0.0)):  # located only where it can matter
            k, s = np.unravel_index(np.argmin(states[:, :, i]), (nt, ns))
            when[i], subject[i] = times[k], s if members is None else members[s]
        return cls(low, when, subject, np.maximum(top, -low))

    def merge(self, other: Extremes) -> Extremes:
        """The extremes of both."""
        lower = other.low < self.low
        return Extremes(
            np.where(lower, other.low, self.low),
            np.where(lower, other.time, self.time),
            np.where(lower, other.subject, self.subject),
            np.maximum(self.high, other.high),
        )


def run_hybrid(
    model,
    boluses: Sequence[tuple[float, int, np.ndarray]],
    infusions: Sequence[tuple[float, float, int, np.ndarray]],
    p: np.ndarray,
    times: np.ndarray,
    rtol: float,
    atol: float,
    ode: Callable[[np.ndarray], np.ndarray],
    names: Sequence[str],
    out: np.ndarray | None = None,
) -> tuple[dict[str, np.ndarray], Extremes]:
    """Outputs (and optionally the amounts of every state) for one group of subjects sharing event times.

    Parameters
    ----------
    model : Model
        With a usable :func:`linear_subsystem`.
    boluses : sequence of (time h, state index, amounts (ns,))
    infusions : sequence of (start h, end h, state index, rates (ns,))
    p : ndarray, shape (n_args, ns)
        Arguments of every subject (:attr:`Model.argument_names` order).
    times : ndarray, shape (n_times,)
        Output times, h, increasing.
    rtol, atol : float
        Tolerances of the nonlinear part (the linear part is exact).
    ode : callable
        ``ode(members) -> ndarray (n_times, len(members), n_states)``: the ODE engine, for the subjects
        this engine hands over (ill-conditioned eigenvectors, or a stiff nonlinear part).
    names : sequence of str
        Outputs to compute.
    out : ndarray, shape (n_times, ns, n_states), optional
        Where to write the amounts of every state; without it no state array is formed (the outputs
        are computed in modal form and the nonlinear states are kept only where an output needs them).

    Returns
    -------
    outputs : dict of str to ndarray, shape (n_times, ns)
    extremes : Extremes
        With ``out``: over the output times.  Without: the nonlinear states over the solver's steps
        and the output times they are kept at, the linear states at the event times (the linear part
        is exact; between events it only decays or fills towards its input).
    """
    system = _system(model)
    ns = p.shape[1]
    modes = _Modes(system.rate_matrix(p))
    good = np.flatnonzero(modes.good)
    nt = len(times)
    outputs = {name: np.empty((nt, ns)) for name in names}
    extremes = None

    def hand_over(members: np.ndarray) -> Extremes:
        states = ode(members)
        values = model.numeric.outputs(
            times[:, None], np.moveaxis(states, 2, 0), p[:, None, members], names=tuple(names)
        )
        for k, name in enumerate(names):
            outputs[name][:, members] = values[k]
        if out is not None:
            out[:, members] = states
        return Extremes.of_states(states, times, members, floor=-10 * atol)

    def merged(more: Extremes) -> Extremes:
        return more if extremes is None else extremes.merge(more)

    if len(good) < ns:
        extremes = hand_over(np.flatnonzero(~modes.good))
        if len(good) == 0:
            return outputs, extremes
    rows = None if out is not None else system.output_plan(model, tuple(names)).nonlinear_rows
    rounds = 0
    while True:
        try:
            run = _Run(
                model,
                system,
                modes if len(good) == ns else modes.subset(good),
                [(t, i, a[good]) for t, i, a in boluses],
                [(s, e, i, r[good]) for s, e, i, r in infusions],
                p[:, good],
                times,
                rtol,
                atol,
            )
            # a trial step may overflow for one subject: that step is rejected (see _Run.integrate), so
            # the floating-point warnings of the rejected attempt are not news
            with np.errstate(over="ignore", invalid="ignore"):
                run.integrate(rows)
            break
        except _Stiff as signal:
            culprits = signal.culprits
            isolate = (
                culprits is not None
                and rounds < _ISOLATION_ROUNDS
                and 0 < len(culprits) <= _ISOLATION_SHARE * len(good)
            )
            if not isolate:
                return outputs, merged(hand_over(good))
            # only the culprits go to the ODE engine; the others are integrated again without them
            rounds += 1
            extremes = merged(hand_over(good[culprits]))
            good = np.delete(good, culprits)
    if out is None:  # outputs in modal form, no state array
        values = run.outputs(names)
        for name in names:
            if len(good) == ns:
                outputs[name] = values[name]
            else:
                outputs[name][:, good] = values[name]
        more = run.extremes(good)
    else:  # the states are formed anyway: the outputs from them, as the other engines do
        part = out if len(good) == ns else np.empty((nt, len(good), out.shape[2]))
        run.states(part)
        if part is not out:
            out[:, good] = part
        values = model.numeric.outputs(
            times[:, None], np.moveaxis(part, 2, 0), p[:, None, good], names=tuple(names)
        )
        for k, name in enumerate(names):
            outputs[name][:, good] = values[k]
        more = Extremes.of_states(part, times, good, floor=-10 * atol)
    return outputs, merged(more)


def simulate_outputs(
    model,
    regimen,
    times: Sequence[float] | np.ndarray,
    outputs: Sequence[str],
    *,
    parameters=None,
    weight=None,
    rtol: float = 1e-8,
    atol: float = 1e-10,
) -> dict[str, np.ndarray]:
    """Some outputs of many subjects by the hybrid engine, without the full state array.

    Shorthand for ``simulate(model, regimen, times, engine="hybrid", outputs=outputs,
    keep_states=False).outputs``: only the named outputs are formed (an output linear in the linear
    states is evaluated in modal form from the modes it sees), so no (n_times, n_subjects, n_states)
    array is built.  Meant for large populations, called on chunks of subjects; memory is
    O(n_times · n_subjects · (n_outputs + n_nonlinear_states)).

    Parameters
    ----------
    model : Model
        A model with a usable :func:`linear_subsystem`.
    regimen : Regimen or mapping of ID to Regimen
        As for :func:`pkmodel.simulate` (groups with SS doses go to the ODE engine).
    times : array_like, shape (n_times,)
        Output times, h, increasing.
    outputs : sequence of str
        Output names of the model.
    parameters, weight
        As for :func:`pkmodel.simulate`.
    rtol, atol : float
        Tolerances of the nonlinear part.

    Returns
    -------
    dict of str to ndarray, shape (n_times, n_subjects)

    Raises
    ------
    SimulationError
        An unknown output, a model without a usable split, or bad times or parameters.

    Examples
    --------
    >>> from pkmodel import load_model, q3w
    >>> m = load_model("adc_esg401_friberg")
    >>> out = simulate_outputs(m, q3w(16, cycles=1), [0.0, 504.0], ["ANC"], weight=70.0)
    >>> out["ANC"].shape, float(out["ANC"][0, 0])
    ((2, 1), 5.0)
    """
    from .errors import SimulationError
    from .simulation import simulate

    if not linear_subsystem(model).usable:
        raise SimulationError(
            f"model {model.name} has no closed linear subsystem with a nonlinear rest; use pkmodel.simulate()"
        )
    result = simulate(
        model,
        regimen,
        times,
        parameters=parameters,
        weight=weight,
        engine="hybrid",
        rtol=rtol,
        atol=atol,
        outputs=outputs,
        keep_states=False,
    )
    return dict(result.outputs)


class _Run:
    """One run of the hybrid engine over a group of subjects that share event times.

    Arrays put subjects on the last axis (``(..., ns)``) so that every operation is one vectorised
    call over all subjects.
    """

    def __init__(self, model, system: _System, modes: _Modes, boluses, infusions, p, times, rtol, atol):
        self.model, self.system, self.modes = model, system, modes
        self.times = np.asarray(times, dtype=float)
        self.rtol, self.atol = float(rtol), float(atol)
        self.p = p
        self.ns = p.shape[1]
        lin_pos = {int(s): k for k, s in enumerate(system.lin)}
        non_pos = {int(s): k for k, s in enumerate(system.non)}
        # events: time -> [(kind, part, position, values)], applied as the exact engine does
        self.events: dict[float, list[tuple[str, str, int, np.ndarray]]] = {}
        for t, i, a in boluses:
            part, pos = ("L", lin_pos[i]) if i in lin_pos else ("N", non_pos[i])
            self.events.setdefault(float(t), []).append(("bolus", part, pos, np.asarray(a, dtype=float)))
        for start, end, i, r in infusions:
            part, pos = ("L", lin_pos[i]) if i in lin_pos else ("N", non_pos[i])
            r = np.asarray(r, dtype=float)
            self.events.setdefault(float(end), []).append(("end", part, pos, r))
            self.events.setdefault(float(start), []).append(("start", part, pos, r))
        for t in self.events:  # ends first, then boluses, then starts (as the exact and ODE engines)
            self.events[t].sort(key=lambda e: {"end": 0, "bolus": 1, "start": 2}[e[0]])
        x0 = model.numeric.initial(p)  # (n, ns)
        self.x0_lin = x0[system.lin].T.copy()  # (ns, nL)
        self.y0 = x0[system.non].copy()  # (nN, ns)
        self.b = system.input_vector(p)  # (ns, nL)
        self.fixed = system.fixed_arguments(p)
        self.banded: list[tuple[int, int, int, np.ndarray]] = []  # (offset, lo, hi, coefficients (hi−lo, ns))
        if system._coefficients is not None:
            values = system._coefficients(*self.fixed, batch=(self.ns,))
            k = 0
            for d, lo, hi in system.banded:
                self.banded.append((d, lo, hi, values[k : k + hi - lo].copy()))
                k += hi - lo
        dosed = sorted({pos for ev in self.events.values() for _, part, pos, _ in ev if part == "L"})
        self.dosed = dosed
        self.order = self._relevant_modes(self.modes.V[:, system.coupling, :], dosed)
        lam_r = np.take_along_axis(modes.lam, self.order, axis=1)
        self.lam_r = lam_r.T.copy()  # (M, ns)
        VJ = modes.V[:, system.coupling, :]
        self.R = np.take_along_axis(VJ, self.order[:, None, :], axis=2).transpose(1, 2, 0).copy()  # (nJ,M,ns)
        self.cache: dict[float, tuple[np.ndarray, ...]] = {}
        self.steps = self.rejected = 0

    # -- modes -------------------------------------------------------------------------------------
    def _relevant_modes(self, W: np.ndarray, dosed: list[int]) -> np.ndarray:
        """Per subject, the indices of the modes that the rows ``W`` (ns, k, m) of V see, reachable ones first.

        A mode counts when, for some row and some source of amount (b, the initial state, a dosed
        compartment), its share |W_m|·|(V⁻¹·source)_m| exceeds min(1e-9, rtol/100) of the largest share:
        the modes left out change the result by less than that (relative), far below the tolerance.
        Shares below 1e3·ε·cond(V) are not told apart from rounding (an exactly unseen mode comes out
        of the eigendecomposition with a share of order ε·cond(V)) and are left out too.
        """
        m, ns = self.modes, self.ns
        n = self.system.n_lin
        if W.shape[1] == 0:
            return np.zeros((ns, 0), dtype=int)
        sources = [self.b, self.x0_lin] + [np.broadcast_to(np.eye(n)[i], (ns, n)) for i in dosed]
        reach = np.stack([np.abs(np.einsum("smn,sn->sm", m.Vinv, c)) for c in sources], axis=-1)  # (ns,m,q)
        share = np.abs(W)[:, :, :, None] * reach[:, None, :, :]  # (ns, k, m, q)
        top = share.max(axis=2, keepdims=True)
        floor = np.maximum(min(_RELEVANT, 0.01 * self.rtol), 1e3 * np.finfo(float).eps * m.cond)
        relevant = (share > floor[:, None, None, None] * top).any(axis=(1, 3))  # (ns, m)
        count = int(relevant.sum(axis=1).max())
        return np.argsort(~relevant, axis=1, kind="stable")[:, :count]

    def _gather(self, z: np.ndarray) -> np.ndarray:
        """Reduced modal vector (M, ns) from the full one (ns, m)."""
        return np.take_along_axis(z, self.order, axis=1).T.copy()

    def _propagators(self, h: float, keep: bool):
        """For a step h: AR, RG (14, nJ, M, ns) giving the coupling amounts at the stage times, and the
        one-step propagators E1, G1 (M, ns) of the reduced modal state."""
        hit = self.cache.get(h)
        if hit is not None:
            return hit
        tau = (_FRACTIONS * h)[:, None, None]
        E = np.exp(self.lam_r[None] * tau)  # (14, M, ns)
        G = _phi(self.lam_r[None], tau)
        entry = (self.R[None] * E[:, None], self.R[None] * G[:, None], E[_LAST], G[_LAST])
        if keep:
            if len(self.cache) >= 64:
                self.cache.clear()
            self.cache[h] = entry
        return entry

    def _input(self, AR: np.ndarray, RG: np.ndarray, zr: np.ndarray, vr: np.ndarray) -> np.ndarray:
        """Coupling amounts Σ_m AR·z + RG·v (real part)."""
        x = np.einsum("...jms,ms->...js", AR, zr) + np.einsum("...jms,ms->...js", RG, vr)
        return x.real if self.modes.complex else x

    # -- the nonlinear right-hand side ------------------------------------------------------------
    def _f(self, t: float, y: np.ndarray, xj: np.ndarray, out: np.ndarray) -> None:
        """out[:] = dN/dt, all arrays (nN, ns): the diagonals of the linear part, then the remainder."""
        system = self.system
        if not self.banded:
            for i, v in enumerate(system._rhs(t, *y, *xj, *self.fixed)):
                out[i] = v
        else:
            first = True
            for d, lo, hi, C in self.banded:
                if first:  # offset 0 over all rows
                    np.multiply(C, y, out=out)
                    first = False
                else:
                    out[lo:hi] += C * y[lo + d : hi + d]
            if system._remainder is not None:
                for i, v in zip(
                    system.remainder_rows, system._remainder(t, *y, *xj, *self.fixed), strict=True
                ):
                    out[i] += v
        if self.n_rates:
            out += self.rate_n

    def _norm(self, err: np.ndarray) -> float:
        return float(np.sqrt(np.mean(err**2, axis=0)).max())

    # -- integration -------------------------------------------------------------------------------
    def integrate(self, rows: Sequence[int] | None = None) -> None:
        """Advance the nonlinear states to every output time; record the linear segments.

        ``rows``: positions (within the nonlinear states) whose values are kept at the output times
        (default all).
        """
        m, ns = self.modes, self.ns
        nL, nN = self.system.n_lin, self.system.n_non
        times = self.times
        nt = len(times)
        t_end = float(times[-1])
        stops = sorted({t for t in self.events if 0.0 < t < t_end} | {t_end}) if t_end > 0 else []
        rate_l = np.zeros((ns, nL))
        self.rate_n = np.zeros((nN, ns))
        y = self.y0.copy()
        self.rows = rows = np.arange(nN) if rows is None else np.asarray(rows, dtype=int)
        self.y_out = y_out = np.empty((nt, len(rows), ns))
        self.n_rates = 0
        self.segments = segments = []  # (start h, modal state (ns, m), modal input (ns, m))
        # smallest amount of each nonlinear state per subject, when, and largest |amount| (steps and stops)
        self.low, self.low_time, self.high = y.copy(), np.zeros_like(y), np.abs(y)

        def apply_events(t: float, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            for kind, part, pos, values in self.events.get(t, ()):
                if kind == "bolus":
                    if part == "L":
                        z = z + m.Vinv[:, :, pos] * values[:, None]
                    else:
                        y[pos] += values
                    continue
                sign = 1.0 if kind == "start" else -1.0
                if part == "L":
                    rate_l[:, pos] += sign * values
                else:
                    self.rate_n[pos] += sign * values
                    self.n_rates = 1
            return z, np.einsum("smn,sn->sm", m.Vinv, self.b + rate_l)

        z, v = apply_events(0.0, np.einsum("smn,sn->sm", m.Vinv, self.x0_lin))
        segments.append((0.0, z, v))
        k_next = int(np.searchsorted(times, 0.0, side="right"))
        y_out[:k_next] = y[rows]
        if not stops or nN == 0:
            self._stop_only(stops, segments, apply_events)
            if nN:
                y_out[k_next:] = y[rows]
            return
        # B = [y; K]: a stage's state y + h·Σ a_j·K_j is one matrix product (coefficients [1, h·a])
        B = np.empty((_NS + 5, nN, ns))
        B2, shape = B.reshape(_NS + 5, nN * ns), (nN, ns)
        K, K2 = B[1:], B2[1:]
        zr, vr = self._gather(z), self._gather(v)
        v_part: dict[float, np.ndarray] = {}
        t = 0.0
        self._f(t, y, self._input(self.R, np.zeros_like(self.R), zr, vr), K[0])
        h = self._initial_step(t, y, K[0], zr, vr, stops[0])
        stiff = calm = 0
        flagged = np.zeros(ns, dtype=bool)
        for stop in stops:
            while t < stop:
                last = t + h >= stop or stop - (t + h) <= 1e-9 * h
                step = stop - t if last else h
                AR, RG, E1, G1 = self._propagators(step, keep=not last)
                forced = v_part.get(step)  # the input's share from v is fixed within a segment
                if forced is None:
                    forced = v_part[step] = np.einsum("cjms,ms->cjs", RG, vr)
                xs = np.einsum("cjms,ms->cjs", AR, zr) + forced  # coupling amounts (14, nJ, ns)
                if self.modes.complex:
                    xs = xs.real
                B[0] = y
                coef = step * _AUG
                coef[:, 0] = 1.0
                for i in range(1, _NS):
                    yi = (coef[i, : i + 1] @ B2[: i + 1]).reshape(shape)
                    self._f(t + _C[i] * step, yi, xs[i - 1], K[i])
                y_new = (coef[_NS] @ B2[: _NS + 1]).reshape(shape)
                self._f(t + step, y_new, xs[_LAST], K[_NS])
                scale = self.atol + self.rtol * np.maximum(np.abs(y), np.abs(y_new))
                e53 = (_E53 @ K2[: _NS + 1]).reshape(2, *shape) / scale
                e5 = np.sum(e53[0] ** 2, axis=0)
                e3 = np.sum(e53[1] ** 2, axis=0)
                with np.errstate(divide="ignore", invalid="ignore"):
                    norms = np.where(e5 > 0, step * e5 / np.sqrt((e5 + 0.01 * e3) * nN), 0.0)
                # a subject whose step overflowed (NaN/inf error or state) must reject the step, not pass
                # as "no error" (NaN > 0 is False above)
                finite = np.isfinite(e5) & np.isfinite(e3) & np.isfinite(y_new).all(axis=0)
                norms = np.where(finite, norms, np.inf)
                norm = float(norms.max())
                self.steps += 1
                if self.steps > _MAX_STEPS:
                    raise _Stiff
                if not np.isfinite(norm) or norm > 1.0:
                    self.rejected += 1
                    factor = (
                        _MIN_FACTOR if not np.isfinite(norm) else max(_MIN_FACTOR, _SAFETY * norm**_EXPONENT)
                    )
                    h = _ladder(step * factor)
                    if h <= 1e-12 * max(1.0, abs(t)):  # no progress (e.g. non-finite values)
                        raise _Stiff(np.flatnonzero(~(norms <= 1.0)))  # the subjects failing the step
                    continue
                # stiffness (Hairer): h·ρ, ρ ≈ ‖f(y_new) − f(y_12)‖/‖y_new − y_12‖ (both at t + h)
                with np.errstate(divide="ignore", invalid="ignore"):
                    num = np.sum((K[_NS] - K[_NS - 1]) ** 2, axis=0)
                    den = np.sum((y_new - yi) ** 2, axis=0)
                    rho = np.sqrt(np.where(den > 0, num / den, 0.0))  # (ns,)
                if step * float(rho.max()) > _STIFF:
                    stiff, calm = stiff + 1, 0
                    flagged |= step * rho > _STIFF  # who was at the stability bound during this stretch
                    if stiff >= 15:
                        raise _Stiff(np.flatnonzero(flagged))
                else:
                    calm += 1
                    if calm >= 6:
                        stiff = 0
                        flagged[:] = False
                t_new = stop if last else t + step
                j = int(np.searchsorted(times, t_new, side="left"))
                if j > k_next:
                    self._dense(t, step, y, y_new, B, xs, times[k_next:j], y_out[k_next:j])
                    k_next = j
                y, t = y_new, t_new
                self._track(y, t)
                zr = E1 * zr + G1 * vr
                K[0] = K[_NS]
                if not last:
                    h = _ladder(step * min(_MAX_FACTOR, _SAFETY * max(norm, 1e-12) ** _EXPONENT))
            # at the stop: the exact modal state, the events, a new segment
            start, z0, v0 = segments[-1]
            z = np.exp(m.lam * (stop - start)) * z0 + _phi(m.lam, stop - start) * v0
            z, v = apply_events(stop, z)
            segments.append((stop, z, v))
            zr, vr = self._gather(z), self._gather(v)
            v_part.clear()
            self._track(y, t)
            if k_next < nt and times[k_next] == stop:
                y_out[k_next] = y[rows]
                k_next += 1
            self._f(t, y, self._input(self.R, np.zeros_like(self.R), zr, vr), K[0])

    def _track(self, y: np.ndarray, t: float) -> None:
        """Update the running extremes of the nonlinear states with the values ``y`` (nN, ns) at ``t``."""
        lower = y < self.low
        np.copyto(self.low, y, where=lower)
        np.copyto(self.low_time, t, where=lower)
        np.maximum(self.high, np.abs(y), out=self.high)

    def extremes(self, members: np.ndarray | None = None) -> Extremes:
        """Extremes of every state without the state array.

        Nonlinear states: over the accepted steps, the stops and the output times they are kept at.
        Linear states: at the event times (segment starts), where the exact solution is formed anyway.
        """
        system, m = self.system, self.modes
        n = len(self.model.state_names)
        ns = self.ns
        low, when, high = np.full((n, ns), np.inf), np.zeros((n, ns)), np.zeros((n, ns))
        non, lin = system.non, system.lin
        low[non], when[non], high[non] = self.low, self.low_time, self.high
        if len(self.rows):
            kept = self.y_out  # (nt, r, ns)
            vals, top = kept.min(axis=0), kept.max(axis=0)
            rows = non[self.rows]
            better = vals < low[rows]
            low[rows] = np.where(better, vals, low[rows])
            located = np.nonzero(better & (vals < -10 * self.atol))  # located only where it can matter
            for r, s in zip(*located, strict=True):
                when[rows[r], s] = self.times[np.argmin(kept[:, r, s])]
            high[rows] = np.maximum(high[rows], np.maximum(top, -vals))
        for start, z, _ in self.segments:
            A = np.einsum("snm,sm->ns", m.V, z)
            A = A.real if m.complex else A
            better = A < low[lin]
            low[lin] = np.where(better, A, low[lin])
            when[lin] = np.where(better, start, when[lin])
            high[lin] = np.maximum(high[lin], np.abs(A))
        return Extremes.of_candidates(low, when, high, members)

    def _stop_only(self, stops, segments, apply_events) -> None:
        """No nonlinear states to integrate: only the segments of the linear part."""
        m = self.modes
        for stop in stops:
            start, z0, v0 = segments[-1]
            z = np.exp(m.lam * (stop - start)) * z0 + _phi(m.lam, stop - start) * v0
            segments.append((stop, *apply_events(stop, z)))

    def _dense(self, t, h, y, y_new, B, xs, when: np.ndarray, out: np.ndarray) -> None:
        """DOP853's 7th-order continuous extension at ``when`` in (t, t + h), into ``out`` (q, nN, ns).

        ``B`` (_NS + 5, nN, ns) holds y (row 0, the step's start) and the stage derivatives K (rows 1...).
        """
        K, B2 = B[1:], B.reshape(len(B), -1)
        coef = h * _AUG_EXTRA
        coef[:, 0] = 1.0
        for k, (s, c) in enumerate(zip(range(_NS + 1, _NS + 4), _C_EXTRA, strict=True)):
            yi = (coef[k, : s + 1] @ B2[: s + 1]).reshape(y.shape)
            self._f(t + c * h, yi, xs[_NS - 1 + s - (_NS + 1)], K[s])
        rows = self.rows
        Kr = K[:, rows]
        yr = y[rows]
        delta = y_new[rows] - yr
        F = np.empty((7, yr.size))
        F[0] = delta.ravel()
        F[1] = h * Kr[0].ravel() - F[0]
        F[2] = 2 * F[0] - h * (Kr[_NS] + Kr[0]).ravel()
        F[3:] = h * (_D @ Kr.reshape(len(K), -1))
        x = (when - t) / h
        powers = x[:, None] ** np.arange(1, 8)[None, :]  # (q, 7)
        out[:] = yr + ((powers @ _DENSE) @ F).reshape(len(when), *yr.shape)

    def _initial_step(self, t, y, f0, zr, vr, stop: float) -> float:
        """Hairer's starting step (section II.4), on the ladder."""
        scale = self.atol + self.rtol * np.abs(y)
        d0, d1 = self._norm(y / scale), self._norm(f0 / scale)
        h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
        h0 = min(h0, stop - t)
        AR, RG, _, _ = self._propagators(h0, keep=False)
        f1 = np.empty_like(f0)
        self._f(t + h0, y + h0 * f0, self._input(AR[_LAST], RG[_LAST], zr, vr), f1)
        d2 = self._norm((f1 - f0) / scale) / h0
        order = DOP853.order
        h1 = max(1e-6, h0 * 1e-3) if max(d1, d2) <= 1e-15 else (0.01 / max(d1, d2)) ** (1 / (order + 1))
        return _ladder(min(100 * h0, h1, stop - t))

    # -- results -----------------------------------------------------------------------------------
    def _segment_of_times(self) -> tuple[np.ndarray, np.ndarray]:
        starts = np.array([s for s, _, _ in self.segments])
        which = np.searchsorted(starts, self.times, side="right") - 1
        return which, self.times - starts[which]

    def states(self, out: np.ndarray) -> None:
        """Amounts of every state at the output times into ``out`` (nt, ns, n)."""
        system = self.system
        out[:, :, _as_slice(system.non[self.rows])] = self.y_out.transpose(0, 2, 1)
        block = _as_slice(system.lin)
        for idx, X in self._linear_blocks(self.modes.V, time_major=True):
            out[_as_slice(idx), :, block] = X.transpose(1, 0, 2)  # (T, ns, k): runs of k contiguous

    def outputs(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        """Only the named outputs at the output times, each (nt, ns), computed from what they use.

        An output that is linear in the linear states (TAb, ADC, SN38 of the ADC model) is one row c of
        coefficients: c·A_L(t) = (c·V)·z(t), evaluated in modal form over the modes that row sees; any
        other output is evaluated from the states it references.
        """
        model, system = self.model, self.system
        plan = system.output_plan(model, tuple(names))
        nt, ns = len(self.times), self.ns
        result: dict[str, np.ndarray] = {}
        if plan.linear:
            C = plan.coefficients(self.p)  # (ns, k, nL)
            W = np.einsum("skl,slm->skm", C, self.modes.V)
            values = np.empty((len(plan.linear), nt, ns))
            for idx, X in self._linear_blocks(W, order=self._relevant_modes(W, self.dosed)):
                values[:, _as_slice(idx), :] = X.transpose(1, 2, 0)
            values += plan.offsets(self.p)[:, None, :]
            for k, name in enumerate(plan.linear):
                result[name] = values[k]
        for name, func, lin_used, non_used, arg_used in plan.general:
            lin_vals = np.empty((nt, len(lin_used), ns))
            if lin_used:
                W = self.modes.V[:, lin_used, :]
                for idx, X in self._linear_blocks(W, order=self._relevant_modes(W, self.dosed)):
                    lin_vals[_as_slice(idx)] = X.transpose(2, 1, 0)
            args = [self.times[:, None]]
            where = {int(r): k for k, r in enumerate(self.rows)}
            args += [self.y_out[:, where[j], :] for j in non_used] + [
                lin_vals[:, j, :] for j in range(len(lin_used))
            ]
            args += [self.p[k][None, :] for k in arg_used]
            with np.errstate(divide="ignore", invalid="ignore"):
                value = np.asarray(func(*args), dtype=float)
            result[name] = value if value.shape == (nt, ns) else np.broadcast_to(value, (nt, ns)).copy()
        return {name: result[name] for name in names}

    def _linear_blocks(self, W: np.ndarray, time_major: bool = False, order: np.ndarray | None = None):
        """Yield (output indices, W·A_L) with shape (ns, k, T) for rows W (ns, k, m) of V, block by block.

        ``time_major``: shape (ns, T, k) instead (cheaper to copy into a (T, ns, k) state array).
        ``order`` (ns, M): per subject, the only modes to sum over (the others are not seen by the rows,
        see :meth:`_relevant_modes`); default all.

        Within a segment z(τ) = e^{λτ}·z0 + φ(λ, τ)·v0 = e^{λτ}·(z0 + v0/λ) − v0/λ, so that
        W·z(τ) = (W·diag(z0 + v0/λ))·e^{λτ} + W·(−v0/λ): one exponential per mode and time and one
        matrix product.  Modes with |λ|·τ_max < 1e-3 (nearly constant over the segment) keep the φ
        form, whose rounding error the split would amplify by 1/(|λ|τ).  A block of times with the
        same offsets as the previous one reuses its exponentials: e^{λ(τ+d)} = e^{λτ}·e^{λd} (one
        product instead of one exponential per element; rounding grows by ε per block).
        """
        m = self.modes
        lam = m.lam
        if order is not None:
            lam = np.take_along_axis(m.lam, order, axis=1)
            W = np.take_along_axis(W, order[:, None, :], axis=2)
        which, tau = self._segment_of_times()
        ns, M = self.ns, lam.shape[1]
        width = max(1, int(_BLOCK // max(1, ns * M)))
        for seg in np.unique(which):
            _, z0, v0 = self.segments[seg]
            if order is not None:
                z0, v0 = np.take_along_axis(z0, order, axis=1), np.take_along_axis(v0, order, axis=1)
            idx_all = np.flatnonzero(which == seg)
            tau_all = tau[idx_all]
            fast = np.abs(lam) * tau_all[-1] >= 1e-3  # (ns, m)
            safe = np.where(fast, lam, 1.0)
            ratio = np.where(fast, v0 / safe, 0.0)
            Wa = W * np.where(fast, z0 + ratio, 0.0)[:, None, :]
            base = np.einsum("skm,sm->sk", W, -ratio)[:, :, None]
            slow = ~fast
            E = pattern = None
            previous = 0.0
            for lo in range(0, len(idx_all), width):
                idx = idx_all[lo : lo + width]
                tt = tau_all[lo : lo + width]
                t = tt[None, None, :]
                if pattern is not None and len(tt) == len(pattern) and np.array_equal(tt - tt[0], pattern):
                    E *= np.exp(lam * (tt[0] - previous))[:, :, None]  # same offsets: shift the block
                else:
                    E = np.exp(lam[:, :, None] * t)
                    pattern = tt - tt[0]
                previous = tt[0]
                if time_major:
                    X = np.matmul(E.transpose(0, 2, 1), Wa.transpose(0, 2, 1)) + base.transpose(0, 2, 1)
                else:
                    X = np.matmul(Wa, E) + base
                if slow.any():
                    ls = np.where(slow, lam, 0.0)[:, :, None]
                    Zs = np.where(
                        slow[:, :, None], np.exp(ls * t) * z0[:, :, None] + _phi(ls, t) * v0[:, :, None], 0
                    )
                    if time_major:
                        X = X + np.matmul(Zs.transpose(0, 2, 1), W.transpose(0, 2, 1))
                    else:
                        X = X + np.matmul(W, Zs)
                yield idx, (X.real if m.complex else X)


def _ladder(h: float) -> float:
    """Round a step size down to the ladder 2**(k/_LADDER)."""
    return float(2.0 ** (np.floor(np.log2(h) * _LADDER) / _LADDER))


def _as_slice(index: np.ndarray) -> slice | np.ndarray:
    """A run of consecutive indices as a slice (basic indexing copies faster than fancy indexing)."""
    if len(index) and np.all(np.diff(index) == 1):
        return slice(int(index[0]), int(index[-1]) + 1)
    return index
