"""Fast predictions of linear models for population fits: all subjects and parameter sets at once (private).

A population fit asks, at every step, for the predictions of many subjects, each at a handful of
parameter sets (the finite-difference stencil of its η).  For a linear model
``dA/dt = K·A + b + u(t)`` whose doses ``u`` (boluses, zero-order infusions, steady state) do not depend
on the parameters, the solution is a superposition, and in the eigenbasis ``K = V Λ V⁻¹`` every mode
evolves on its own (``z = V⁻¹A``)::

    z_k(t) = e^{λ_k (t − T)} z_k(T) + (t − T)·φ₁(λ_k (t − T))·(V⁻¹b)_k
             + Σ_boluses  a·e^{λ_k (t − t_d)}·(V⁻¹)_{k c}
             + Σ_infusions r·e^{λ_k v}·w·φ₁(λ_k w)·(V⁻¹)_{k c}

with ``φ₁(x) = (eˣ − 1)/x`` (``= 1`` at ``x = 0``, evaluated by ``expm1``, so ``λ → 0`` is exact), ``T`` the
state origin (time 0 with the initial amounts, or the last SS=1 dose, which resets the state to the
steady state), an infusion of rate ``r`` delivered over ``[t − v − w, t − v]`` up to ``t``, and a steady
state (SS) dose given by its exact periodic fixed point ``z = (e^{λτ}·(dose term) + (b term))/(1 − e^{λτ})``.
The time structure (which dose acts on which observation time, for how long) is fixed for a subject and
computed once (:class:`SubjectDesign`); a call only evaluates exponentials of ``λ``, so all subjects ×
parameter sets × observation times are one vectorised evaluation.

The modal form is exact in exact arithmetic and accurate to about ``cond(V)·ε``; a parameter set whose
eigenvector matrix is ill-conditioned (near-equal eigenvalues, e.g. ``KA ≈ CL/V``, or a defective ``K``)
or whose steady state is (nearly) singular is reported as *not done* and the caller computes it by the
matrix-exponential engine of :func:`pkmodel.simulate` instead.  Equivalence with
``simulate(..., engine="exact")`` is tested on every shipped linear model and dose type
(tests/test_fast_prediction.py).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pkmodel.dosing import Regimen
from pkmodel.errors import PkmodelError, SimulationError
from pkmodel.model import Model

__all__ = ["ModalPredictor", "SubjectDesign", "subject_design"]

COND_LIMIT = 1.0e7  # largest cond₁(V) accepted (error ≈ cond·ε ≈ 1e-9 relative); above: expm engine
_SS_RATIO = 1.0e-8  # smallest min|1 − e^{λτ}| / max|1 − e^{λτ}| accepted for a steady state


@dataclass(frozen=True, eq=False)
class SubjectDesign:
    """The fixed time structure of one subject's prediction (private).

    Attributes
    ----------
    times : ndarray, shape (J,)
        Distinct observation times, h (the targets).
    origin_dt : ndarray, shape (J,)
        Time since the state origin of each target, h.
    origin : ndarray of int, shape (J,)
        −1: the origin is time 0 with the initial amounts; ``k >= 0``: the SS=1 dose ``ss[k]``.
    dose_target, dose_cmt : ndarray of int, shape (E,)
        Target row and receiving state of each (target, dose) term.
    dose_amount : ndarray, shape (E,)
        Bolus amount, or infusion rate (amount/h), in the state's unit.
    dose_v, dose_width : ndarray, shape (E,)
        Time from the end of the delivered part to the target, and its length (0 for a bolus), h.
    dose_bolus : ndarray, shape (E,)
        1.0 for a bolus term, 0.0 for an infusion term.
    jump_target, jump_ss : ndarray of int, shape (G,)
        SS=2 doses (steady state added to the current state) acting on a target.
    jump_dt : ndarray, shape (G,)
        Time since that dose, h.
    ss : tuple of (state index, amount, duration h, interval h, include b)
        The steady-state doses.
    obs_output, obs_row : ndarray of int, shape (n_obs,)
        Each observation's output (index into the model's outputs) and target row.
    """

    times: np.ndarray
    origin_dt: np.ndarray
    origin: np.ndarray
    dose_target: np.ndarray
    dose_cmt: np.ndarray
    dose_amount: np.ndarray
    dose_v: np.ndarray
    dose_width: np.ndarray
    dose_bolus: np.ndarray
    jump_target: np.ndarray
    jump_ss: np.ndarray
    jump_dt: np.ndarray
    ss: tuple[tuple[int, float, float, float, bool], ...]
    obs_output: np.ndarray
    obs_row: np.ndarray


def subject_design(
    model: Model,
    regimen: Regimen,
    times: np.ndarray,
    weight: float | None,
    obs_output: np.ndarray,
    obs_row: np.ndarray,
) -> SubjectDesign | None:
    """The design of one subject, or None when its doses need the general engine.

    Parameters
    ----------
    model : Model
        A linear model.
    regimen : Regimen
    times : ndarray, shape (J,)
        Distinct sorted observation times, h.
    weight : float or None
        Body weight, kg (mg/kg doses).
    obs_output, obs_row : ndarray of int, shape (n_obs,)
        Each observation's output (index into ``model.numeric.output_names``) and row in ``times``.

    Returns
    -------
    SubjectDesign or None
        None for dosing this module does not reproduce exactly (several steady-state doses at one time).

    Raises
    ------
    SimulationError
        As :func:`pkmodel.simulate` would (unknown compartment, mg/kg dose without weight).
    """
    from pkmodel.simulation import _plan  # the simulator's own dose plan: the same event semantics

    plan = _plan(model, regimen, None if weight is None else np.array([float(weight)]))
    times = np.asarray(times, dtype=float)
    ss_times = [float(t) for t, *_ in plan.steady]
    if len(set(ss_times)) != len(ss_times):
        return None
    ss = tuple(
        (int(i), float(np.ravel(a)[0]), float(d), float(tau), flag == 1)
        for _t, i, a, d, tau, flag in plan.steady
    )
    if any(d > tau for _i, _a, d, tau, _f in ss):
        return None
    resets = [(t, k) for k, t in enumerate(ss_times) if plan.steady[k][5] == 1]
    origin_time = np.zeros(times.size)
    origin = np.full(times.size, -1)
    for t_reset, k in resets:  # in time order: a later reset overrides an earlier one
        hit = times >= t_reset
        origin_time[hit] = t_reset
        origin[hit] = k
    target, cmt, amount, v, width, bolus = [], [], [], [], [], []
    for t_dose, i, a in plan.boluses:
        hit = np.flatnonzero((times >= t_dose) & (origin_time <= t_dose))
        target.append(hit)
        cmt.append(np.full(hit.size, i))
        amount.append(np.full(hit.size, float(np.ravel(a)[0])))
        v.append(times[hit] - t_dose)
        width.append(np.zeros(hit.size))
        bolus.append(np.ones(hit.size))
    for start, end, i, r in plan.infusions:
        first = np.maximum(start, origin_time)  # an infusion running across a reset continues after it
        hit = np.flatnonzero((times > first) & (end > origin_time))
        stop = np.minimum(times[hit], end)
        target.append(hit)
        cmt.append(np.full(hit.size, i))
        amount.append(np.full(hit.size, float(np.ravel(r)[0])))
        v.append(times[hit] - stop)
        width.append(stop - first[hit])
        bolus.append(np.zeros(hit.size))
    jump_target, jump_ss, jump_dt = [], [], []
    for k, (t_ss, *_rest) in enumerate(plan.steady):
        if plan.steady[k][5] != 2:
            continue
        hit = np.flatnonzero((times >= t_ss) & (origin_time <= t_ss))  # (no SS=1 dose at t_ss: see above)
        jump_target.append(hit)
        jump_ss.append(np.full(hit.size, k))
        jump_dt.append(times[hit] - t_ss)

    def cat(parts, dtype=float):
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)

    target_a = cat(target, int)
    order = np.argsort(target_a, kind="stable")
    return SubjectDesign(
        times=times,
        origin_dt=times - origin_time,
        origin=origin,
        dose_target=target_a[order],
        dose_cmt=cat(cmt, int)[order],
        dose_amount=cat(amount)[order],
        dose_v=cat(v)[order],
        dose_width=cat(width)[order],
        dose_bolus=cat(bolus)[order],
        jump_target=cat(jump_target, int),
        jump_ss=cat(jump_ss, int),
        jump_dt=cat(jump_dt),
        ss=ss,
        obs_output=np.asarray(obs_output, dtype=int),
        obs_row=np.asarray(obs_row, dtype=int),
    )


def _phi1(x: np.ndarray) -> np.ndarray:
    """(eˣ − 1)/x, with the limit 1 at x = 0 (no cancellation near 0)."""
    small = x == 0
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.expm1(x) / np.where(small, 1.0, x)
    return np.where(small, 1.0, out)


@dataclass(frozen=True, eq=False)
class _Assembly:
    """The designs of a group of subjects laid end to end (private; cached per group)."""

    t_subject: np.ndarray  # (J,) subject row of each target
    t_time: np.ndarray  # (J,)
    t_position: np.ndarray  # (J,) row of the target within its subject
    width: int  # the largest number of targets of a subject
    origin_dt: np.ndarray  # (J,)
    origin_src: np.ndarray  # (J,) row of the origin state in the source stack
    d_subject: np.ndarray  # (E,)
    d_v: np.ndarray
    d_piece: np.ndarray  # (E,) row of the term's delivered piece
    p_subject: np.ndarray  # (P,) distinct pieces (subject, state, amount, width, bolus), computed once each
    p_cmt: np.ndarray
    p_amount: np.ndarray
    p_width: np.ndarray
    p_bolus: np.ndarray
    d_targets: np.ndarray  # (U,) distinct targets with dose terms
    d_starts: np.ndarray  # (U,) first term of each in the (target-sorted) term arrays
    d_single: bool  # one term per target (U = E): the terms need no summing
    d_every: bool  # ... and every target has one, in order (U = E = J): the terms are z itself
    g_target: np.ndarray  # (G,)
    g_src: np.ndarray
    g_dt: np.ndarray
    ss_subject: np.ndarray  # (Q,)
    ss: tuple[tuple[int, float, float, float, bool], ...]
    o_subject: np.ndarray  # (N,) subject row of each observation
    o_column: np.ndarray  # (N,) its column in the subject's observations
    o_output: np.ndarray  # (N,) its output
    o_target: np.ndarray  # (N,) its target
    o_starts: np.ndarray | None  # (M,) first observation of each subject; None if one has none


def _assemble(designs: Sequence[SubjectDesign]) -> _Assembly:
    m_count = len(designs)
    n_ss = np.cumsum([0] + [len(d.ss) for d in designs])
    n_t = np.cumsum([0] + [d.times.size for d in designs])
    keys = ("ts", "tt", "odt", "osrc", "ds", "dt", "gt", "gs", "gdt", "sss", "om", "oc", "oj")
    parts: dict[str, list] = {k: [] for k in keys}
    for m, d in enumerate(designs):
        j = d.times.size
        parts["ts"].append(np.full(j, m))
        parts["tt"].append(d.times)
        parts["odt"].append(d.origin_dt)
        parts["osrc"].append(np.where(d.origin < 0, m, m_count + n_ss[m] + d.origin))
        parts["ds"].append(np.full(d.dose_target.size, m))
        parts["dt"].append(d.dose_target + n_t[m])
        parts["gt"].append(d.jump_target + n_t[m])
        parts["gs"].append(m_count + n_ss[m] + d.jump_ss)
        parts["gdt"].append(d.jump_dt)
        parts["sss"].append(np.full(len(d.ss), m))
        parts["om"].append(np.full(d.obs_row.size, m))
        parts["oc"].append(np.arange(d.obs_row.size))
        parts["oj"].append(d.obs_row + n_t[m])
    d_target = np.concatenate(parts["dt"]).astype(int)
    targets, starts = np.unique(d_target, return_index=True)  # terms are sorted by target per subject

    def cat(name, dtype=float):
        return np.concatenate(parts[name]).astype(dtype)

    def field(name):
        return np.concatenate([getattr(d, name) for d in designs])

    d_subject = cat("ds", int)
    counts = [d.obs_row.size for d in designs]  # observations per subject
    table = np.stack(
        [d_subject, field("dose_cmt"), field("dose_amount"), field("dose_width"), field("dose_bolus")], axis=1
    ).astype(float)
    pieces, d_piece = np.unique(table, axis=0, return_inverse=True)

    return _Assembly(
        t_subject=cat("ts", int),
        t_time=cat("tt"),
        t_position=np.concatenate([np.arange(d.times.size) for d in designs]).astype(int),
        width=max(d.times.size for d in designs),
        origin_dt=cat("odt"),
        origin_src=cat("osrc", int),
        d_subject=d_subject,
        d_v=field("dose_v"),
        d_piece=np.ravel(d_piece).astype(int),
        p_subject=pieces[:, 0].astype(int),
        p_cmt=pieces[:, 1].astype(int),
        p_amount=pieces[:, 2],
        p_width=pieces[:, 3],
        p_bolus=pieces[:, 4],
        d_targets=targets,
        d_starts=starts,
        d_single=targets.size == d_target.size,
        d_every=targets.size == d_target.size == int(n_t[-1]) and np.array_equal(targets, np.arange(n_t[-1])),
        g_target=cat("gt", int),
        g_src=cat("gs", int),
        g_dt=cat("gdt"),
        ss_subject=cat("sss", int),
        ss=tuple(s for d in designs for s in d.ss),
        o_subject=cat("om", int),
        o_column=cat("oc", int),
        o_output=field("obs_output").astype(int),
        o_target=cat("oj", int),
        o_starts=np.cumsum([0, *counts[:-1]]).astype(int) if min(counts) > 0 else None,
    )


class ModalPredictor:
    """Amounts and outputs of a linear model for many subjects × parameter sets (private engine).

    Parameters
    ----------
    model : Model
        A linear model (``model.is_linear``).
    """

    def __init__(self, model: Model):
        if not model.is_linear:
            raise SimulationError(f"the modal predictor needs a linear model; {model.name} is nonlinear")
        self.model = model
        self.num = model.numeric
        self._cache: dict[tuple, _Assembly] = {}
        self.blocks = _triangular_blocks(self.num.n_states, self.num._k_index)
        # no constant input and no initial amounts (most PK models: b and x0 are the constant 0): without
        # steady-state doses the state starts from 0 and only the dose terms remain
        self.zero_base = all(not f.varying and not np.any(f.values) for f in (self.num._b, self.num._initial))

    def assembly(self, key: tuple, designs: Sequence[SubjectDesign]) -> _Assembly:
        hit = self._cache.get(key)
        if hit is None:
            hit = _assemble(designs)
            if len(self._cache) >= 256:
                self._cache.clear()
            self._cache[key] = hit
        return hit

    def outputs(self, asm: _Assembly, args: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Outputs at every target for every parameter set.

        Parameters
        ----------
        asm : _Assembly
            The assembled designs of ``M`` subjects.
        args : ndarray, shape (M, K, n_args)
            Model arguments (parameters, covariates, inputs in ``model.argument_names`` order).

        Returns
        -------
        outputs : ndarray, shape (n_outputs, J, K)
            Every output of the model at every target (targets of all subjects end to end).
        done : ndarray of bool, shape (M, K)
            False where the modal solution is not trusted (ill-conditioned eigenvectors, singular steady
            state, a non-finite value of an observed output): compute those sets another way.
        """
        num = self.num
        m_count, k_count, _ = args.shape
        p = np.moveaxis(args, 2, 0)  # (n_args, M, K)
        K = num.rate_matrix(p)  # (M, K, n, n)
        with np.errstate(all="ignore"):
            lam, V, Vinv, usable = _eig(K, self.blocks)
            cond = _norm1(V) * _norm1(Vinv)
        done = usable & np.isfinite(cond) & (cond <= COND_LIMIT)
        ts = asm.t_subject
        with np.errstate(all="ignore"):
            z = None  # the modal coordinates at every target (J, K, n); None while they are all 0
            if not (self.zero_base and not asm.ss):
                # modal coordinates of b and x0; sources: x0 per subject, then one state per SS dose
                b = num.input_vector(p)  # (M, K, n)
                x0 = np.moveaxis(num.initial(p), 0, -1)  # (M, K, n)
                cb = np.einsum("mkij,mkj->mki", Vinv, b)
                sources = [np.einsum("mkij,mkj->mki", Vinv, x0)]
                for q, (i, amount, duration, tau, include_b) in enumerate(asm.ss):
                    m = asm.ss_subject[q]
                    z_ss, ok = _steady_state(
                        lam[m], Vinv[m, :, :, i], cb[m], amount, duration, tau, include_b
                    )
                    done[m] &= ok
                    sources.append(z_ss[None])
                src = np.concatenate(sources, axis=0)  # (M + Q, K, n)
                if np.any(src) or np.any(cb):  # initial amounts, steady states or a constant input
                    lam_t = lam[ts]  # (J, K, n)
                    dt0 = asm.origin_dt[:, None, None]
                    z = np.exp(lam_t * dt0) * src[asm.origin_src] + dt0 * _phi1(lam_t * dt0) * cb[ts]
            if asm.d_subject.size:
                # per delivered piece (bolus, or infusion part of width w): (1 or w·φ₁(λw))·a·V⁻¹e_c
                w = asm.p_width[:, None, None]
                piece = (asm.p_bolus[:, None, None] + w * _phi1(lam[asm.p_subject] * w)) * (
                    Vinv[asm.p_subject, :, :, asm.p_cmt] * asm.p_amount[:, None, None]
                )  # (P, K, n)
                terms = np.exp(lam[asm.d_subject] * asm.d_v[:, None, None])
                terms *= piece[asm.d_piece]  # (E, K, n): decayed from the end of the piece to the target
                if z is None and asm.d_every:  # (one dose term at every target, e.g. a single dose)
                    z = terms
                else:
                    if z is None:
                        z = np.zeros((ts.size, k_count, lam.shape[-1]), dtype=terms.dtype)
                    z[asm.d_targets] += (
                        terms if asm.d_single else np.add.reduceat(terms, asm.d_starts, axis=0)
                    )
            if z is None:
                z = np.zeros((ts.size, k_count, lam.shape[-1]), dtype=lam.dtype)
            if asm.g_target.size:
                lam_g = lam[asm.t_subject[asm.g_target]]
                np.add.at(z, asm.g_target, np.exp(lam_g * asm.g_dt[:, None, None]) * src[asm.g_src])
            # back to amounts, x = V z: one (n × n)·(n × J_max) product per subject and set
            padded = np.zeros((m_count, k_count, z.shape[-1], asm.width), dtype=z.dtype)
            padded[ts, :, :, asm.t_position] = z
            x = np.matmul(V, padded)[ts, :, :, asm.t_position]  # (J, K, n)
            if np.iscomplexobj(x):
                x = x.real
            values = num.outputs(asm.t_time[:, None], np.moveaxis(x, 2, 0), np.moveaxis(args[ts], 2, 0))
        # a non-finite observed value (overflow, an unstable mode): let the exact engine decide
        observed = np.isfinite(values[asm.o_output, asm.o_target, :])  # (N, K)
        if asm.o_starts is not None:  # (observations are in subject order)
            done &= ~np.logical_or.reduceat(~observed, asm.o_starts, axis=0)
        else:
            bad = np.zeros((m_count, k_count), dtype=bool)
            np.logical_or.at(bad, asm.o_subject, ~observed)
            done &= ~bad
        return values, done


def _triangular_blocks(n: int, nonzero: Sequence[tuple[int, int]]) -> list[np.ndarray] | None:
    """State groups that make K block lower triangular, in flow order; None if K is one block.

    ``K[i, j] != 0`` means state ``j`` flows into ``i``.  The strongly connected components of that graph,
    ordered so that every flow goes from an earlier group to a later one (or within a group), make
    ``K`` block lower triangular: its eigenvalues are those of the diagonal blocks, and the eigenvectors
    follow by forward substitution (see :func:`_eig`).  For the DAR-resolved ADC models (deconjugation
    DAR k → DAR k−1, release into free payload) this replaces one 21×21 eigenproblem by eleven 1×1 or 2×2.
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    rows = [i for i, j in nonzero if i != j]
    cols = [j for i, j in nonzero if i != j]
    graph = csr_matrix((np.ones(len(rows)), (cols, rows)), shape=(n, n))  # edge j → i
    count, label = connected_components(graph, directed=True, connection="strong")
    if count == 1:
        return None
    feeds = {(int(label[j]), int(label[i])) for i, j in zip(rows, cols, strict=True) if label[i] != label[j]}
    order: list[int] = []
    pending = set(range(count))
    while pending:  # Kahn's algorithm on the condensation (a DAG)
        ready = sorted(c for c in pending if not any(a in pending and b == c for a, b in feeds))
        order.extend(ready)
        pending.difference_update(ready)
    return [np.flatnonzero(label == c) for c in order]


def _eig(
    K: np.ndarray, blocks: list[np.ndarray] | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Eigenvalues (..., n), unit-norm eigenvectors V and V⁻¹ (..., n, n), and a usable flag (...).

    With ``blocks`` (K block lower triangular in that order, see :func:`_triangular_blocks`): in the
    permuted order the eigenpairs of each diagonal block, then for an eigenvalue ``λ`` of an earlier
    block the part of its eigenvector in block ``c`` from ``(λI − K_cc)·x_c = Σ_{d<c} K_cd·x_d``.  ``V`` is
    then block lower triangular too, and ``V⁻¹`` follows by block forward substitution,
    ``Y_cc = V_cc⁻¹``, ``Y_c,<c = −V_cc⁻¹·V_c,<c·Y_<c,<c``.  The flag is False where a system is
    singular (``λ`` shared by two blocks: no eigenvector basis).  Without blocks, LAPACK's general
    eigensolver and inverse.
    """
    if blocks is None:
        lam, V = np.linalg.eig(K)
        Vinv, ok = _inverse(V)
        return lam, V, Vinv, ok
    n = K.shape[-1]
    perm = np.concatenate(blocks)
    Kp = K[..., perm[:, None], perm[None, :]]
    if len(blocks) == n:  # every block 1×1: K is triangular in flow order
        lam, V, Y, usable = _eig_triangular(Kp)
    else:
        lam, V, Y, usable = _eig_blocks(Kp, blocks)
    # back to the model's state order: K = Pᵀ K_p P, so V = Pᵀ V_p and V⁻¹ = V_p⁻¹ P
    V_out = np.empty_like(V)
    V_out[..., perm, :] = V
    Y_out = np.empty_like(Y)
    Y_out[..., :, perm] = Y
    return lam, V_out, Y_out, usable


def _eig_triangular(Kp: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_eig` of lower triangular matrices (..., n, n) (every block of :func:`_triangular_blocks`
    1×1, e.g. a one-compartment model with an absorption depot): ``λ_a = K_aa``; eigenvector ``a`` has
    ``v_a = 1``, ``v_c = Σ_{a≤d<c} K_cd·v_d / (λ_a − K_cc)`` below and 0 above; ``V`` is unit lower
    triangular and so is ``V⁻¹``, ``Y_ca = −Σ_{a≤d<c} V_cd·Y_da``; then the columns of ``V`` are scaled to
    unit norm (the rows of ``V⁻¹`` inversely).  Not usable where ``λ_a = K_cc`` for some ``c > a``."""
    batch, n = Kp.shape[:-2], Kp.shape[-1]
    lam = np.diagonal(Kp, axis1=-2, axis2=-1).copy()
    V = np.zeros(Kp.shape)
    Y = np.zeros(Kp.shape)
    usable = np.ones(batch, dtype=bool)
    for a in range(n):
        V[..., a, a] = 1.0
        for c in range(a + 1, n):
            denominator = lam[..., a] - lam[..., c]
            singular = denominator == 0
            usable &= ~singular
            flow = np.einsum("...d,...d->...", Kp[..., c, a:c], V[..., a:c, a])
            V[..., c, a] = flow / np.where(singular, 1.0, denominator)
    for a in range(n):  # (V complete: row c of V⁻¹ needs the columns of V right of a)
        Y[..., a, a] = 1.0
        for c in range(a + 1, n):
            Y[..., c, a] = -np.einsum("...d,...d->...", V[..., c, a:c], Y[..., a:c, a])
    norms = _column_norms(V)  # (..., 1, n)
    V /= norms
    Y *= np.swapaxes(norms, -1, -2)
    return lam, V, Y, usable


def _eig_blocks(
    Kp: np.ndarray, blocks: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_eig` of block lower triangular matrices (..., n, n) in flow order (see there)."""
    batch, n = Kp.shape[:-2], Kp.shape[-1]
    edges = np.cumsum([0] + [b.size for b in blocks])
    parts = [_small_eig(Kp[..., a:e, a:e]) for a, e in itertools.pairwise(edges)]
    dtype = np.result_type(*(w for w, _ in parts), *(v for _, v in parts))
    lam = np.zeros((*batch, n), dtype=dtype)
    V = np.zeros((*batch, n, n), dtype=dtype)
    Y = np.zeros((*batch, n, n), dtype=dtype)
    usable = np.ones(batch, dtype=bool)
    for a, e, (w, v) in zip(edges[:-1], edges[1:], parts, strict=True):
        lam[..., a:e] = w
        V[..., a:e, a:e] = v
        if a:  # earlier eigenvalues: their eigenvectors' part in this block
            rhs = np.swapaxes(Kp[..., a:e, :a] @ V[..., :a, :a], -1, -2)  # (..., a, size)
            A = lam[..., :a, None, None] * np.eye(e - a) - Kp[..., None, a:e, a:e]
            x, ok = _solve(A, rhs)
            usable &= ok
            V[..., a:e, :a] = np.swapaxes(x, -1, -2)
    V /= _column_norms(V)
    for a, e in itertools.pairwise(edges):
        inv_cc, ok = _small_inverse(V[..., a:e, a:e])
        usable &= ok
        Y[..., a:e, a:e] = inv_cc
        if a:
            Y[..., a:e, :a] = -inv_cc @ (V[..., a:e, :a] @ Y[..., :a, :a])
    return lam, V, Y, usable


def _norm1(A: np.ndarray) -> np.ndarray:
    """The 1-norm (largest column sum of ``|A|``) of stacked small matrices (..., n, n) → (...).

    The same as ``np.linalg.norm(A, 1, axis=(-2, -1))``; the loops over the matrix's rows and columns
    are several times faster than numpy's reductions over such short axes.
    """
    magnitude = np.abs(A)
    sums = magnitude[..., 0, :].copy()
    for i in range(1, A.shape[-2]):
        sums += magnitude[..., i, :]
    out = sums[..., 0]
    for j in range(1, A.shape[-1]):
        out = np.maximum(out, sums[..., j])
    return out


def _column_norms(V: np.ndarray) -> np.ndarray:
    """Euclidean norms of the columns of stacked small matrices (..., n, n) → (..., 1, n) (see _norm1)."""
    squares = V.real**2 + V.imag**2 if np.iscomplexobj(V) else V * V
    total = squares[..., 0:1, :].copy()
    for i in range(1, V.shape[-2]):
        total += squares[..., i : i + 1, :]
    return np.sqrt(total)


def _small_inverse(A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of batched 1×1 and 2×2 matrices in closed form (LAPACK above), and where it exists."""
    size = A.shape[-1]
    if size > 2:
        return _inverse(A)
    if size == 1:
        det = A[..., 0, 0]
        adj = np.ones_like(A)
    else:
        det = A[..., 0, 0] * A[..., 1, 1] - A[..., 0, 1] * A[..., 1, 0]
        adj = np.stack(
            [np.stack([A[..., 1, 1], -A[..., 0, 1]], -1), np.stack([-A[..., 1, 0], A[..., 0, 0]], -1)], -2
        )
    singular = det == 0
    return adj / np.where(singular, 1.0, det)[..., None, None], ~singular


def _small_eig(A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues and eigenvectors of batched 1×1 and 2×2 matrices in closed form; LAPACK above.

    2×2: ``λ = m ± √(m² − det)`` with ``m`` half the trace, the larger-magnitude root first and the other
    as ``det/λ₁`` (no cancellation); eigenvector ``(b, λ − a)`` or ``(λ − d, c)``, whichever is longer.
    """
    size = A.shape[-1]
    if size == 1:
        return A[..., 0, :].copy(), np.ones_like(A)
    if size > 2:
        return np.linalg.eig(A)
    a, b, c, d = A[..., 0, 0], A[..., 0, 1], A[..., 1, 0], A[..., 1, 1]
    m = 0.5 * (a + d)
    det = a * d - b * c
    disc = (0.5 * (a - d)) ** 2 + b * c
    if np.any(disc < 0):
        disc = disc.astype(complex)
    root = np.sqrt(disc)
    big = m + np.where(np.real(m) >= 0, root, -root)
    small = np.where(big != 0, det / np.where(big != 0, big, 1.0), 0.0)
    lam = np.stack([big, small], axis=-1)
    first = np.stack([np.broadcast_to(b[..., None], lam.shape), lam - a[..., None]], axis=-2)
    second = np.stack([lam - d[..., None], np.broadcast_to(c[..., None], lam.shape)], axis=-2)
    n1 = np.linalg.norm(first, axis=-2, keepdims=True)
    n2 = np.linalg.norm(second, axis=-2, keepdims=True)
    V = np.where(n1 >= n2, first, second)
    norm = np.maximum(n1, n2)
    diagonal = norm == 0  # b = c = 0 and λ = a or d: the unit vectors
    V = np.where(diagonal, np.eye(2, dtype=V.dtype), V / np.where(diagonal, 1.0, norm))
    return lam, V


def _solve(A: np.ndarray, rhs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Batched solve A x = rhs (A (..., e, s, s), rhs (..., e, s)); singular systems flagged, not raised.

    1×1 and 2×2 systems by Cramer's rule (a zero determinant flags the set), larger ones by LAPACK.
    """
    size = A.shape[-1]
    if size <= 2:
        if size == 1:
            det = A[..., 0, 0]
            num = rhs
        else:
            det = A[..., 0, 0] * A[..., 1, 1] - A[..., 0, 1] * A[..., 1, 0]
            r0, r1 = rhs[..., 0], rhs[..., 1]
            num = np.stack(
                [A[..., 1, 1] * r0 - A[..., 0, 1] * r1, A[..., 0, 0] * r1 - A[..., 1, 0] * r0], axis=-1
            )
        singular = det == 0
        x = num / np.where(singular, 1.0, det)[..., None]
        return x, ~np.any(singular, axis=-1)
    try:
        return np.linalg.solve(A, rhs[..., None])[..., 0], np.ones(A.shape[:-3], dtype=bool)
    except np.linalg.LinAlgError:
        x = np.full(rhs.shape, np.nan, dtype=np.result_type(A, rhs))
        ok = np.ones(A.shape[:-3], dtype=bool)
        for idx in np.ndindex(*A.shape[:-2]):
            try:
                x[idx] = np.linalg.solve(A[idx], rhs[idx])
            except np.linalg.LinAlgError:
                ok[idx[:-1]] = False
        return x, ok


def _inverse(V: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Batched inverse; singular or non-finite matrices give NaN and a False flag instead of an
    exception (or a partly finite result)."""
    finite = np.all(np.isfinite(V), axis=(-2, -1))
    if finite.all():
        try:
            return np.linalg.inv(V), np.ones(V.shape[:-2], dtype=bool)
        except np.linalg.LinAlgError:
            pass
    out = np.full_like(V, np.nan)
    ok = np.zeros(V.shape[:-2], dtype=bool)
    for idx in zip(*np.nonzero(finite), strict=True) if finite.ndim else [()]:
        if finite[idx]:
            try:
                out[idx] = np.linalg.inv(V[idx])
                ok[idx] = True
            except np.linalg.LinAlgError:
                pass
    return out, ok


def _steady_state(
    lam: np.ndarray,
    column: np.ndarray,
    cb: np.ndarray,
    amount: float,
    duration: float,
    tau: float,
    include_b: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Pre-dose steady state in modal coordinates, shape (K, n), and where it is trusted (K,).

    ``column`` is ``V⁻¹`` applied to a unit dose into the receiving state, ``cb`` is ``V⁻¹b``; the base
    input ``b`` takes part only when ``include_b`` (SS=1, as in the simulator).
    """
    base = cb if include_b else np.zeros_like(cb)
    if duration == 0.0:
        numerator = np.exp(lam * tau) * amount * column + tau * _phi1(lam * tau) * base
    else:
        rate = amount / duration
        rest = tau - duration
        numerator = (
            np.exp(lam * rest) * duration * _phi1(lam * duration) * (base + rate * column)
            + rest * _phi1(lam * rest) * base
        )
    denominator = -np.expm1(lam * tau)
    size = np.abs(denominator)
    ok = np.min(size, axis=-1) > _SS_RATIO * np.max(size, axis=-1)
    return numerator / np.where(size > 0, denominator, 1.0), ok


def design_or_none(
    model: Model,
    regimen: Regimen,
    times: np.ndarray,
    weight: float | None,
    obs_output: np.ndarray,
    obs_row: np.ndarray,
) -> SubjectDesign | None:
    """:func:`subject_design`, or None where the dose plan cannot be built (the caller then simulates)."""
    try:
        return subject_design(model, regimen, times, weight, obs_output, obs_row)
    except (SimulationError, PkmodelError):
        return None
