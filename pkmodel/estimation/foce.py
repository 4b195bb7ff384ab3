"""Population estimation by FOCE with interaction (FOCE-I), FOCE and FO, as NONMEM defines them.

The objective
-------------
For subject *i* with observations ``y`` (on the comparison scale, see
:mod:`pkmodel.estimation.residual`), random effects ``η ~ N(0, Ω)`` and the conditional objective

    ``L(η) = Σ_j ℓ_j(f_j(η)) + ηᵀΩ⁻¹η``   (``ℓ_j = −2 log p(y_j | η)`` without ``log 2π``),

the empirical Bayes estimate ``η̂ = argmin L`` is found by Newton's method with a backtracking line
search (``∂f/∂η`` and ``∂²f/∂η²`` by central finite differences, all points of the stencil evaluated in
one batched prediction call per subject; where the exact Hessian is not positive definite the
Gauss–Newton/expected-information one is used), to a Newton decrement of 1e-16.  With
``H = Ω⁻¹ + ½ Σ_j w_j g_j g_jᵀ`` (``w`` from :func:`~pkmodel.estimation.residual.observation_terms`,
``g_j = ∂f_j/∂η`` at η̂) the contribution is

    FOCE-I / FOCE:  ``OFV_i = L(η̂) + log det Ω + log det H``

This is the Laplace approximation with the Hessian built from first derivatives of ``f`` only, which is
how NONMEM's FOCE with INTERACTION is defined (Wang 2007; with interaction ``H`` includes the
``½ tr(R⁻¹∂R R⁻¹∂R)`` term of the residual variance's dependence on η, Almquist et al. 2015).  It
reproduces NONMEM's objective values and η̂ of Wang's (2007) example (see the tests; leaving the
``½ tr`` term out, or using the linearised form below with interaction, does not).  For observed
(Gaussian) values and no interaction it equals the linearised marginal ``log det V + ỹᵀV⁻¹ỹ`` with
``ỹ = y − f(η̂) + Gη̂``, ``V = GΩGᵀ + R`` (matrix determinant lemma plus the stationarity of η̂); with
interaction the two differ at second order.  Censored (BLQ, Beal M3) observations enter ``L`` through
their exact likelihood ``−2 log Φ((LLOQ − f)/s)`` and ``H`` through ``m(z)(z + m(z))·(∂z/∂η)(∂z/∂η)ᵀ``,
the exact second derivative of ``−log Φ(z)`` in ``z`` chained with first derivatives only — the same
Laplace form; for a subject without BLQ records it is the Gaussian one above.

* ``"foce-i"``: the residual variance is evaluated at ``f(η)`` (interaction).
* ``"foce"``: the residual variance is evaluated at the population prediction ``f(0)``.
* ``"fo"``: ``η̂ = 0`` and the linearised marginal ``log det V + ỹᵀV⁻¹ỹ`` with ``ỹ = y − f(0)``,
  ``V = GΩGᵀ + R(f(0))`` (no BLQ handling: censored observations are refused).

``OFV = Σ OFV_i`` is reported without the constant (NONMEM's "objective function value") and with it
(``−2 log L``, adding ``log 2π`` per *uncensored* observation; a censored one contributes a probability,
which has no such constant).

The outer problem minimises the OFV over the free parameters in an unconstrained space (thetas on a log
or logit scale according to their bounds, Ω by its Cholesky factor with log diagonal, ``log σ``) with
BFGS and a central finite-difference gradient, its inverse Hessian started at the diagonal curvature
that the first gradient's stencil gives; each evaluation re-solves every η̂ to a tight tolerance (the
objective is then smooth to ~1e-7), warm-started from the η̂ of the last evaluated point moved to first
order by ``∂η̂/∂x`` (central differences of the η̂ of the last gradient's stencil); the first stencil
starts from a rough η̂ of its base point.  A point and the 2n points of its gradient (BFGS asks for
both at every point), and the stencil of the covariance step, are evaluated together: their η̂ are
found by one vectorised Newton iteration over all (point, subject) pairs, and all predictions of a
Newton step come from one ``predict_many`` call when the problem has one.  At the size of a typical
dataset the cost of a call is mostly fixed overhead, not arithmetic, so this batching is what makes the
fit fast (Theoph: 24 prediction calls for the fit and its covariance step, instead of 563 one point at
a time).  The η̂ search of a stencil point whose Newton decrement has fallen below 1e-7 (1e-10 for the
point whose value the line search compares) takes its last Newton step without a new prediction call,
its OFV extrapolated to second order in ``L`` and first order in ``log det H`` (see
:meth:`PopulationObjective.solve_eta`); near the optimum most stencils then need one Newton state
instead of two.  The objective reported for the estimates is always that of fully converged η̂.

References
----------
Wang Y (2007) Derivation of various NONMEM estimation methods. J Pharmacokinet Pharmacodyn 34:575–593.
doi:10.1007/s10928-007-9060-6

Almquist J, Leander J, Jirstrand M (2015) J Pharmacokinet Pharmacodyn 42:191–209.
doi:10.1007/s10928-015-9409-1
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.optimize import minimize
from threadpoolctl import ThreadpoolController

from pkmodel.errors import EstimationError
from pkmodel.estimation._layout import DataArrays, ParameterSpace
from pkmodel.estimation._linear import _inverse
from pkmodel.estimation.covariance import covariance_step
from pkmodel.estimation.problem import PopulationProblem
from pkmodel.estimation.residual import LOG_2PI, observation_terms
from pkmodel.estimation.results import PopulationResult, build_population_result

__all__ = ["ObjectiveValue", "fit_population", "population_objective"]

METHODS = ("foce-i", "foce", "fo")
# relative central-difference step for ∂f/∂η: error ≈ h²·|f‴|/6 + ε_f/h with ε_f the predictions' relative
# accuracy (≈1e-14 for expm, ≈1e-12 for the modal path of linear models, cond(V)·eps); 1e-4 keeps both
# terms <= 1e-8 and the OFV smooth to ~1e-7 (6e-6 = eps^(1/3) left 1e-6 noise with the modal path, and the
# outer finite-difference gradient then stalled BFGS near the optimum)
_ETA_STEP = 1.0e-4
_INNER_TOL = 1.0e-16  # Newton decrement (−2LL units) at which η̂ counts as converged
_INNER_MAXITER = 100
# Newton decrement (−2LL units) below which the η̂ search of a point of an outer gradient's stencil or of
# the covariance step's ends with an extrapolated step (see PopulationObjective.solve_eta): its OFV is then
# off by O(decrement) (Theoph: at most 1.2e-9), which the central differences (step 1e-3) see as ~1e-6
# in a gradient and ~1e-3 in a Hessian, below their noise (standard errors: Theoph 3e-5, ESG401 3e-4
# relative, as with other starts of the η̂ searches).  The point whose value BFGS's line search compares
# needs more: with 1e-7 there the ESG401 fit ended on a failed line search; with 1e-10 (an error of order
# 1e-12 per subject) it converges as with fully converged η̂.
_EXTRAPOLATE_DECREMENT = 1.0e-7
_EXTRAPOLATE_BASE_DECREMENT = 1.0e-10
_ROUGH_TOL = 1.0e-4  # Newton decrement of the rough η̂ that starts the first gradient stencil
_NOISE_DECREMENT = 1.0e-8  # below this, the quadratic model is trusted and noise may stop progress
# step of the outer central-difference gradient (optimiser space: log θ, log σ, Cholesky of Ω; relative
# above 1): truncation h²·|f‴|/6 and noise ε_OFV/h both ~1e-4, below the default gtol 1e-3 (1e-4 made the
# noise ~1e-3: BFGS then ended on line-search failures after hundreds of extra evaluations)
_OUTER_STEP = 1.0e-3
# largest number of predicted values (rows × stencil sets × observations) of one batched Newton step: large
# enough that per-call overhead no longer matters (Theoph: 12 subjects × 6 sets × 11 observations per
# point, 45 points per batch, so the 43 points of its covariance step are one batch), small enough to keep
# a large model's intermediate arrays at tens of MB (the 21-state ADC recovery fit of tests/test_fitting.py,
# 9 points per batch: peak memory 241 MB under pytest, 233 MB with 30,000; 204 MB unbatched, earlier)
_BATCH_PREDICTIONS = 36_000
_CACHE_SIZE = 4  # parameter-set blocks remembered per subject (predictions are pure functions of them)


@dataclass(frozen=True)
class ObjectiveValue:
    """The population objective at one set of parameters.

    Attributes
    ----------
    ofv : float
        Σ OFV_i without the constant (NONMEM's objective function value).
    minus_2_log_likelihood : float
        ``ofv`` plus ``log 2π`` per uncensored observation.
    subject_ofv : ndarray, shape (n_subjects,)
        OFV_i per subject (without constant).
    eta : ndarray, shape (n_subjects, n_eta)
        The η̂ (zeros for FO).
    inner_failures : int
        Number of subjects whose η̂ did not converge.
    """

    ofv: float
    minus_2_log_likelihood: float
    subject_ofv: np.ndarray
    eta: np.ndarray
    inner_failures: int


@dataclass
class _State:
    """Quantities of a set of subjects at given η (all arrays indexed by subject row)."""

    f: np.ndarray  # (M, nmax)
    g: np.ndarray  # (M, q, nmax)
    objective: np.ndarray  # (M,) L(η)
    grad: np.ndarray  # (M, q)
    hess: np.ndarray  # (M, q, q)  Gauss–Newton ∇²L (defines the objective)
    step_hess: np.ndarray  # (M, q, q)  the Hessian used for Newton steps
    dlogdet: np.ndarray | None = None  # (M, q)  ∂ log det(½·hess)/∂η (only where the context extrapolates)

    def take(self, rows: np.ndarray) -> _State:
        return _State(
            self.f[rows],
            self.g[rows],
            self.objective[rows],
            self.grad[rows],
            self.hess[rows],
            self.step_hess[rows],
            None if self.dlogdet is None else self.dlogdet[rows],
        )

    def put(self, rows: np.ndarray, other: _State) -> None:
        self.f[rows] = other.f
        self.g[rows] = other.g
        self.objective[rows] = other.objective
        self.grad[rows] = other.grad
        self.hess[rows] = other.hess
        self.step_hess[rows] = other.step_hess
        if self.dlogdet is not None and other.dlogdet is not None:
            self.dlogdet[rows] = other.dlogdet


@dataclass
class _Context:
    """Everything fixed while the objective is evaluated at one or several parameter points.

    Its rows are (point, subject) pairs, point-major: ``B`` points × ``N`` subjects, so that the η̂ of
    all points are found by one vectorised Newton iteration (each step one prediction call for all).
    """

    theta: np.ndarray  # (B, n_theta)
    omega: np.ndarray  # (B, q, q)
    sigma: np.ndarray  # (B, n_sigma)
    logdet_omega: np.ndarray  # (B,)
    subject: np.ndarray  # (R,) the subject of each row
    typical: np.ndarray  # (R, P)
    omega_inv: np.ndarray  # (R, q, q)
    add_sd: np.ndarray  # (R, nmax)
    prop_sd: np.ndarray  # (R, nmax)
    f_var: np.ndarray | None  # (R, nmax) predictions for the variance (None: interaction)
    # per row, the Newton decrement below which its η̂ search ends with an extrapolated step (see
    # solve_eta); None: never
    extrapolate: np.ndarray | None = None


class PopulationObjective:
    """The compiled objective of a :class:`PopulationProblem` for one method (private engine)."""

    def __init__(self, problem: PopulationProblem, method: str):
        if method not in METHODS:
            raise EstimationError(f"method {method!r} is unknown; use one of {', '.join(METHODS)}")
        self.problem = problem
        self.method = method
        self.space = ParameterSpace(problem)
        self.data = DataArrays(problem, self.space)
        if method == "fo" and self.data.n_censored:
            raise EstimationError(
                f"method 'fo' cannot use the {self.data.n_censored} BLQ (censored) observations; use "
                "method='foce-i' (Laplace form with the M3 likelihood) or drop them explicitly"
            )
        self.subjects = problem.subjects
        self.param_names = tuple(p.name for p in problem.parameters)
        theta_pos = {n: k for k, n in enumerate(self.space.theta_names)}
        eta_pos = {n: k for k, n in enumerate(self.space.eta_names)}
        self._param_theta = [
            theta_pos.get(p.theta) if p.theta is not None else None for p in problem.parameters
        ]
        self._param_eta = [eta_pos[p.eta] if p.eta is not None else None for p in problem.parameters]
        self._param_exp = [p.eta_form == "exponential" for p in problem.parameters]
        self._effects = [
            [
                (
                    np.array([s.covariates[e.covariate] for s in self.subjects]),
                    theta_pos[e.theta],
                    e.reference,
                    e.form,
                )
                for e in p.covariates
            ]
            for p in problem.parameters
        ]
        self._typical_fns = [p.typical for p in problem.parameters]
        self.n_eta = self.space.n_eta
        self.n_evaluations = 0
        self.n_predict_calls = 0
        # per subject: the last few parameter-set blocks and their predictions (see predict_rows); only
        # for problems evaluated one point at a time, where points that move Ω or σ alone reuse the last
        # η̂ unmoved (_Outer.eta_start); in batches every warm start moves, so nothing would be found again
        self._tiles: dict[int, np.ndarray] = {}  # see _tiled
        self._cache: list[dict[bytes, np.ndarray]] | None = (
            [{} for _ in self.subjects] if self.points_per_batch == 1 else None
        )

    # ---- parameter model ---------------------------------------------------------------------
    def typical(self, theta: np.ndarray) -> np.ndarray:
        """Typical values of the individual parameters: θ (..., n_theta) → (..., n_subjects, n_parameters)."""
        theta = np.asarray(theta, dtype=float)
        lead = theta.shape[:-1]
        n = len(self.subjects)
        out = np.empty((*lead, n, len(self.param_names)))
        for p in range(len(self.param_names)):
            k = self._param_theta[p]
            if k is not None:
                value = np.broadcast_to(theta[..., k, None], (*lead, n))
                for cov, kt, ref, form in self._effects[p]:
                    exponent = theta[..., kt, None]
                    with np.errstate(all="ignore"):
                        if form == "power":
                            value = value * (cov / ref) ** exponent
                        elif form == "linear":
                            value = value * (1.0 + exponent * (cov - ref))
                        else:
                            value = value * np.exp(exponent * (cov - ref))
                out[..., p] = value
            else:
                fn = self._typical_fns[p]
                for index in np.ndindex(lead):
                    theta_dict = dict(zip(self.space.theta_names, theta[index].tolist(), strict=True))
                    out[index][:, p] = [float(fn(theta_dict, s.covariates)) for s in self.subjects]
        return out

    def individual(self, typical: np.ndarray, eta: np.ndarray) -> np.ndarray:
        """Individual parameters: typical (..., P) combined with η (..., q) → (..., P)."""
        phi = np.array(np.broadcast_to(typical, eta.shape[:-1] + typical.shape[-1:]))
        for p, e in enumerate(self._param_eta):
            if e is None:
                continue
            if self._param_exp[p]:
                with np.errstate(over="ignore"):
                    phi[..., p] = phi[..., p] * np.exp(eta[..., e])
            else:
                phi[..., p] = phi[..., p] + eta[..., e]
        return phi

    def predict_rows(self, rows: np.ndarray, phi: np.ndarray) -> np.ndarray:
        """Predictions of subjects ``rows`` for parameter sets ``phi`` (M, K, P) → (M, K, nmax).

        A subject may appear in several rows (e.g. the parameter points of a batched evaluation).  When
        points are evaluated one at a time, a row whose sets equal those the subject was predicted at
        recently is not predicted again: the outer gradient's points that move only Ω or σ start their
        η̂ search where the base point's ended, with the same parameter sets (predictions are pure
        functions of them).
        """
        if self._cache is None:
            return self._predict(np.asarray(rows), phi)
        out = np.empty((*phi.shape[:2], self.data.nmax))
        keys = [phi[m].tobytes() for m in range(len(rows))]
        missing = []
        for m, i in enumerate(rows):
            hit = self._cache[i].get(keys[m])
            if hit is None:
                missing.append(m)
            else:
                out[m] = hit
        if missing:
            todo = np.asarray(missing)
            out[todo] = self._predict(np.asarray(rows)[todo], phi[todo])
            for m in missing:
                entries = self._cache[rows[m]]
                if len(entries) >= _CACHE_SIZE:
                    del entries[next(iter(entries))]
                entries[keys[m]] = out[m].copy()
        return out

    def _predict(self, rows: np.ndarray, phi: np.ndarray) -> np.ndarray:
        m_count, k_count, _ = phi.shape
        out = np.ones((m_count, k_count, self.data.nmax))
        self.n_predict_calls += len(rows)
        many = self.problem.predict_many
        n = len(self.subjects)
        if many is not None and m_count % n == 0 and np.array_equal(rows, self._tiled(m_count // n)):
            # every subject once per parameter point, point-major (a whole batch): each subject gets
            # the sets of all points side by side, by reshaping alone
            b = m_count // n
            grouped = phi.reshape(b, n, k_count, -1).transpose(1, 0, 2, 3).reshape(n, b * k_count, -1)
            values = self._predict_many(self.subjects, grouped)
            width = values.shape[2]
            values = values.reshape(n, b, k_count, -1).transpose(1, 0, 2, 3).reshape(m_count, k_count, -1)
            out[:, :, :width] = values
            return out
        if many is not None:
            # one call with each subject once: a subject in several rows (several parameter points of
            # a batch) gets all their sets side by side, padded with NaN sets (not predicted)
            unique, slot = np.unique(rows, return_inverse=True)
            counts = np.bincount(slot)
            order = np.argsort(slot, kind="stable")
            rank = np.empty(m_count, dtype=int)
            rank[order] = np.arange(m_count) - np.repeat(np.cumsum(counts) - counts, counts)
            columns = rank[:, None] * k_count + np.arange(k_count)  # (M, K) each row's sets in its subject's
            grouped = np.full((unique.size, counts.max() * k_count, phi.shape[2]), np.nan)
            grouped[slot[:, None], columns] = phi
            values = self._predict_many([self.subjects[i] for i in unique], grouped)
            out[:, :, : values.shape[2]] = values[slot[:, None], columns]
            return out
        batch = self.problem.predict_batch
        single = self.problem.predict
        for m, i in enumerate(rows):
            subject = self.subjects[i]
            n = subject.n_obs
            if batch is not None:
                params = {name: phi[m, :, p].copy() for p, name in enumerate(self.param_names)}
                values = np.asarray(batch(subject, params), dtype=float)
            else:
                values = np.array(
                    [
                        np.asarray(
                            single(
                                subject,
                                {name: float(phi[m, k, p]) for p, name in enumerate(self.param_names)},
                            ),
                            dtype=float,
                        )
                        for k in range(k_count)
                    ]
                )
            if values.shape != (k_count, n):
                which = "predict_batch" if batch is not None else "predict"
                expected = f"({k_count}, {n})" if batch is not None else f"({n},)"
                raise EstimationError(
                    f"subject {subject.id!r}: {which} returned shape "
                    f"{values.shape if batch is not None else values.shape[1:]}, expected {expected} "
                    "(one prediction per observation record of the subject)"
                )
            out[m, :, :n] = values
        return out

    def _tiled(self, points: int) -> np.ndarray:
        """The rows of ``points`` whole points, point-major: 0..N−1 repeated (see :class:`_Context`)."""
        rows = self._tiles.get(points)
        if rows is None:
            rows = self._tiles[points] = np.tile(np.arange(len(self.subjects)), points)
        return rows

    def _predict_many(self, subjects: list, grouped: np.ndarray) -> np.ndarray:
        """``problem.predict_many`` of ``subjects`` at sets (M, K, P), checked; (M, K, L) with L the
        largest number of observations of the subjects (columns past a subject's own are not used)."""
        names = self.param_names
        values = np.asarray(
            self.problem.predict_many(subjects, {name: grouped[:, :, p] for p, name in enumerate(names)}),
            dtype=float,
        )
        width = max(s.n_obs for s in subjects)
        if values.ndim != 3 or values.shape[:2] != grouped.shape[:2] or values.shape[2] < width:
            raise EstimationError(
                f"predict_many returned shape {values.shape}, expected {(*grouped.shape[:2], 'L')} with "
                f"L >= {width} (the largest number of observation records of the subjects)"
            )
        return values[:, :, :width]

    # ---- one objective evaluation -------------------------------------------------------------
    def context(
        self,
        theta: np.ndarray,
        omega: np.ndarray,
        sigma: np.ndarray,
        omega_inv: np.ndarray,
        logdet_omega: np.ndarray,
    ) -> _Context:
        """The evaluation context of ``B`` parameter points: θ (B, n_theta), Ω (B, q, q), σ (B, n_sigma),
        with Ω⁻¹ (B, q, q) and log det Ω (B,) of :func:`_omega_terms` (every Ω positive definite)."""
        n = len(self.subjects)
        b = theta.shape[0]
        add_sd, prop_sd = self.data.residual_sds(sigma)
        ctx = _Context(
            theta=theta,
            omega=omega,
            sigma=sigma,
            logdet_omega=logdet_omega,
            subject=np.tile(np.arange(n), b),
            typical=self.typical(theta).reshape(b * n, -1),
            omega_inv=np.repeat(omega_inv, n, axis=0),
            add_sd=add_sd.reshape(b * n, -1),
            prop_sd=prop_sd.reshape(b * n, -1),
            f_var=None,
        )
        if self.method in ("foce", "fo"):
            ctx.f_var = self.predict_rows(ctx.subject, ctx.typical[:, None, :])[:, 0, :]
        return ctx

    def _steps(self, eta: np.ndarray) -> np.ndarray:
        return _ETA_STEP * np.maximum(self.space.eta_scale[None, :], np.abs(eta))

    def state(self, ctx: _Context, rows: np.ndarray, eta: np.ndarray, newton: bool = True) -> _State:
        """Predictions, ∂f/∂η, L, ∇L and Hessians of subjects ``rows`` at ``eta`` (M, q).

        ``hess`` is the Gauss–Newton (expected information) ``∇²L`` that defines the objective;
        ``step_hess`` the exact ``∇²L`` (second derivatives of f by finite differences) when it is positive
        definite, else ``hess`` — used only for the Newton steps that find η̂.
        """
        q = self.n_eta
        data = self.data
        steps = self._steps(eta)
        pairs = [(k, m) for k in range(q) for m in range(k)] if newton else []
        points = np.repeat(eta[:, None, :], 1 + 2 * q + len(pairs), axis=1)
        for k in range(q):
            points[:, 1 + k, k] += steps[:, k]
            points[:, 1 + q + k, k] -= steps[:, k]
        for c, (k, m) in enumerate(pairs):
            points[:, 1 + 2 * q + c, k] += steps[:, k]
            points[:, 1 + 2 * q + c, m] += steps[:, m]
        phi = self.individual(ctx.typical[rows][:, None, :], points)
        subject = ctx.subject[rows]
        pred = self.predict_rows(subject, phi)
        f = pred[:, 0, :]
        plus, minus = pred[:, 1 : 1 + q, :], pred[:, 1 + q : 1 + 2 * q, :]
        g = (plus - minus) / (2.0 * steps[:, :, None])
        mask = data.mask[subject]
        f_var = f if ctx.f_var is None else ctx.f_var[rows]
        omega_inv = ctx.omega_inv[rows]
        terms = observation_terms(
            data.y[subject],
            f,
            f_var,
            ctx.add_sd[rows],
            ctx.prop_sd[rows],
            data.is_log[subject],
            data.censored[subject],
            ctx.f_var is None,
        )
        ell = np.where(mask, terms.ell, 0.0)
        invalid = np.any(mask & ~np.isfinite(terms.ell), axis=1) | np.any(
            mask[:, None, :] & ~np.isfinite(pred), axis=(1, 2)
        )
        dell = np.where(mask, terms.dell_df, 0.0)
        weight = np.where(mask, terms.weight, 0.0)
        dlogdet = None
        with np.errstate(invalid="ignore", over="ignore"):
            objective = ell.sum(axis=1) + np.einsum("mi,mij,mj->m", eta, omega_inv, eta)
            grad = (g @ dell[:, :, None])[:, :, 0] + 2.0 * (omega_inv @ eta[:, :, None])[:, :, 0]
            hess = (g * weight[:, None, :]) @ g.transpose(0, 2, 1) + 2.0 * omega_inv
            step_hess = hess
            if newton and q:
                d2 = np.where(mask, terms.d2ell_df2, 0.0)
                second = np.empty((len(rows), q, q, data.nmax))
                for k in range(q):
                    second[:, k, k] = (plus[:, k] - 2.0 * f + minus[:, k]) / steps[:, k, None] ** 2
                for c, (k, m) in enumerate(pairs):
                    cross = (pred[:, 1 + 2 * q + c] - plus[:, k] - plus[:, m] + f) / (
                        steps[:, k, None] * steps[:, m, None]
                    )
                    second[:, k, m] = second[:, m, k] = cross
                exact = (
                    (g * d2[:, None, :]) @ g.transpose(0, 2, 1)
                    + (second @ dell[:, None, :, None])[..., 0]
                    + 2.0 * omega_inv
                )
                try:
                    np.linalg.cholesky(exact)
                    step_hess = exact
                except np.linalg.LinAlgError:
                    positive = np.all(np.isfinite(exact), axis=(1, 2))
                    positive[positive] = np.linalg.eigvalsh(exact[positive])[:, 0] > 0
                    step_hess = np.where(positive[:, None, None], exact, hess)
                if ctx.extrapolate is not None and np.any(ctx.extrapolate[rows] > 0):
                    dlogdet = self._dlogdet(ctx, rows, subject, hess, g, weight, second, plus, minus, steps)
        if np.any(invalid):
            objective[invalid] = np.inf
            grad[invalid] = 0.0
            hess[invalid] = 2.0 * omega_inv[invalid]
            step_hess = np.where(invalid[:, None, None], hess, step_hess)
            g = np.nan_to_num(g)
            if dlogdet is not None:
                dlogdet[invalid] = 0.0
        return _State(f, g, objective, grad, hess, step_hess, dlogdet)

    def _dlogdet(
        self,
        ctx: _Context,
        rows: np.ndarray,
        subject: np.ndarray,
        hess: np.ndarray,
        g: np.ndarray,
        weight: np.ndarray,
        second: np.ndarray,
        plus: np.ndarray,
        minus: np.ndarray,
        steps: np.ndarray,
    ) -> np.ndarray:
        """``∂ log det H/∂η_k`` (M, q) with ``H = ½·hess = ½ Σ_j w_j g_j g_jᵀ + Ω⁻¹``:
        ``tr(H⁻¹ S_k W Gᵀ) + ½ tr(H⁻¹ G (∂W/∂η_k) Gᵀ)`` with ``S_k = ∂G/∂η_k`` (the second derivatives of
        the state's stencil) and ``∂w_j/∂η_k`` by central differences of the weights at ``η ± h_k``
        (zero where the weight does not depend on ``f``: Gaussian observations without interaction on a
        linear scale).  Not finite where ``H`` is singular or a prediction is not finite: such rows are
        not extrapolated."""
        data = self.data
        with np.errstate(all="ignore"):
            h_inv = _inverse(0.5 * hess)[0]  # (M, q, q), NaN where singular or not finite
            # Σ_{b,c,j} H⁻¹_cb S_k,bj w_j G_cj, the sum over j as matrix products (a 4-operand einsum is slower)
            swg = second @ (g * weight[:, None, :])[:, None].swapaxes(-1, -2)  # (M, k, b, c)
            out = np.einsum("mkbc,mcb->mk", swg, h_inv)
            varying = bool(np.any(data.is_log[subject]) or np.any(data.censored[subject])) or (
                ctx.f_var is None and bool(np.any(ctx.prop_sd[rows]))
            )
            if varying:
                q = self.n_eta
                both = np.concatenate([plus, minus], axis=1)  # (M, 2q, nmax)
                f_var = both if ctx.f_var is None else ctx.f_var[rows][:, None, :]
                terms = observation_terms(
                    data.y[subject][:, None, :],
                    both,
                    f_var,
                    ctx.add_sd[rows][:, None, :],
                    ctx.prop_sd[rows][:, None, :],
                    data.is_log[subject][:, None, :],
                    data.censored[subject][:, None, :],
                    ctx.f_var is None,
                )
                w = np.where(data.mask[subject][:, None, :], terms.weight, 0.0)
                dw = (w[:, :q] - w[:, q:]) / (2.0 * steps[:, :, None])  # (M, q, nmax)
                out = out + 0.5 * np.einsum("mcb,mbj,mkj,mcj->mk", h_inv, g, dw, g)
        return out

    def solve_eta(
        self, ctx: _Context, eta_start: np.ndarray, tol: float = _INNER_TOL
    ) -> tuple[np.ndarray, _State, np.ndarray, np.ndarray]:
        """Find η̂ of every row of ``ctx`` to a Newton decrement ``tol``; returns (η̂, state at η̂,
        converged flags, OFV shift).

        A row whose Newton decrement ``d`` is at most its ``ctx.extrapolate`` threshold takes its last
        Newton step ``δ`` without a new state: ``η̂ = η + δ``, and its OFV is that of the state at ``η``
        shifted by ``−d/2`` (the quadratic model's decrease of ``L``) plus ``∂ log det H/∂η · δ`` (first
        order of the log-determinant).  What is left out is of order ``|δ|² ≤ d/λ_min(∇²L)``; the last
        Newton state of the η̂ search (a prediction call for all rows) is saved.  The state returned for
        such rows is the one at ``η``.  The shift is 0 for the other rows."""
        n = ctx.subject.size
        rows = np.arange(n)
        eta = np.array(eta_start, dtype=float)
        newton = self.method != "fo"
        st = self.state(ctx, rows, eta, newton)
        bad = np.flatnonzero(~np.isfinite(st.objective) & np.any(eta != 0, axis=1))
        if bad.size:  # warm start unusable: restart those subjects at η = 0
            eta[bad] = 0.0
            st.put(bad, self.state(ctx, bad, eta[bad], newton))
        converged = np.zeros(n, dtype=bool)
        shift = np.zeros(n)
        if self.n_eta == 0 or self.method == "fo":
            converged[:] = True
            return eta, st, converged, shift
        converged |= ~np.isfinite(st.objective)
        extrapolated = np.zeros(n, dtype=bool)
        previous = np.full(n, np.inf)  # Newton decrement of the previous iteration
        for _ in range(_INNER_MAXITER):
            active = np.flatnonzero(~converged)
            if active.size == 0:
                break
            delta = -np.linalg.solve(st.step_hess[active], st.grad[active][:, :, None])[:, :, 0]
            decrement = -np.einsum("mq,mq->m", st.grad[active], delta)
            # converged: decrement below tolerance, or stagnating at the finite-difference noise level
            done = (decrement <= tol) | (
                (decrement < _NOISE_DECREMENT) & (decrement > 0.1 * previous[active])
            )
            converged[active[done]] = True
            previous[active] = decrement
            active, delta, decrement = active[~done], delta[~done], decrement[~done]
            if st.dlogdet is not None:  # (ctx.extrapolate) close enough: the last step without a state
                near = (decrement <= ctx.extrapolate[active]) & np.all(
                    np.isfinite(st.dlogdet[active]), axis=1
                )
                if np.any(near):
                    idx, step_near = active[near], delta[near]
                    shift[idx] = -0.5 * decrement[near] + np.einsum("mq,mq->m", st.dlogdet[idx], step_near)
                    eta[idx] += step_near
                    converged[idx] = extrapolated[idx] = True
                    active, delta, decrement = active[~near], delta[~near], decrement[~near]
            step = np.ones(active.size)
            pending = np.arange(active.size)
            for _halving in range(40):
                if pending.size == 0:
                    break
                idx = active[pending]
                trial = eta[idx] + step[pending, None] * delta[pending]
                st_trial = self.state(ctx, idx, trial)
                old = st.objective[idx]
                small = decrement[pending] < _NOISE_DECREMENT
                ok = (st_trial.objective <= old - 1e-4 * step[pending] * decrement[pending]) | (
                    small & (st_trial.objective <= old + 1e-12 * (1.0 + np.abs(old)))
                )
                accepted = np.flatnonzero(ok)
                eta[idx[accepted]] = trial[accepted]
                st.put(idx[accepted], st_trial.take(accepted))
                # in the noise regime a rejected full step means: at the minimum within rounding
                stop = ~ok & small
                converged[idx[stop]] = True
                pending = pending[~ok & ~small]
                step[pending] *= 0.5
            # a subject whose step could not decrease L is at its minimum within rounding
            converged[active[pending]] = True
        final_dec = np.full(n, np.inf)
        finite = np.isfinite(st.objective)
        if self.n_eta:
            sol = np.linalg.solve(st.hess[finite], st.grad[finite][:, :, None])[:, :, 0]
            final_dec[finite] = np.einsum("mq,mq->m", st.grad[finite], sol)
        ok = finite & ((final_dec <= 1e-8) | extrapolated)
        return eta, st, ok, shift

    def rough_eta(self, theta: np.ndarray, omega: np.ndarray, sigma: np.ndarray) -> np.ndarray:
        """η̂ at one point (θ (1, n_theta), Ω (1, q, q), σ (1, n_sigma)) from η = 0 to a loose tolerance
        (a warm start only; zeros where the point or its η̂ search is invalid)."""
        n, q = len(self.subjects), self.n_eta
        omega_inv, logdet, positive = _omega_terms(omega)
        if not (positive[0] and np.all(np.isfinite(theta)) and np.all(sigma > 0)) or q == 0:
            return np.zeros((n, q))
        ctx = self.context(theta, omega, sigma, omega_inv, logdet)
        eta, st, _, _ = self.solve_eta(ctx, np.zeros((n, q)), tol=_ROUGH_TOL)
        return np.where(np.isfinite(st.objective)[:, None], eta, 0.0)

    def evaluate(
        self, theta: np.ndarray, omega: np.ndarray, sigma: np.ndarray, eta_start: np.ndarray | None = None
    ) -> tuple[ObjectiveValue, _Context | None, _State | None]:
        """The objective at natural parameters (θ, Ω, σ), with its context and state at η̂ (None if invalid)."""
        values, ctx, st = self._evaluate_points(
            np.asarray(theta, dtype=float)[None],
            np.asarray(omega, dtype=float)[None],
            np.asarray(sigma, dtype=float)[None],
            eta_start,
        )
        return values[0], ctx, st

    def evaluate_many(
        self,
        theta: np.ndarray,
        omega: np.ndarray,
        sigma: np.ndarray,
        eta_start: np.ndarray | None = None,
        extrapolate: float | np.ndarray = 0.0,
    ) -> list[ObjectiveValue]:
        """The objective at ``B`` parameter points at once: θ (B, n_theta), Ω (B, q, q), σ (B, n_sigma).

        The same values as :meth:`evaluate` point by point; the η̂ of all points are found together, so
        that every Newton step is one prediction call for all points and subjects (in batches of at
        most ``_BATCH_PREDICTIONS`` predicted values).  ``eta_start`` is the warm start of all points,
        shape (n_subjects, n_eta), or of each, shape (B, n_subjects, n_eta).  ``extrapolate`` (all points,
        or each, shape (B,)): the Newton decrement below which an η̂ search ends with an extrapolated step
        (see :meth:`solve_eta`; such a value agrees with :meth:`evaluate` to about the decrement rather
        than to rounding); 0: never.
        """
        q = self.n_eta
        theta = np.asarray(theta, dtype=float)
        if theta.shape[0] == 0:
            return []
        omega = np.asarray(omega, dtype=float).reshape(theta.shape[0], q, q)
        sigma = np.asarray(sigma, dtype=float).reshape(theta.shape[0], -1)
        size = self.points_per_batch
        thresholds = np.broadcast_to(np.asarray(extrapolate, dtype=float), theta.shape[:1])
        values: list[ObjectiveValue] = []
        for first in range(0, theta.shape[0], size):
            part = slice(first, first + size)
            starts = eta_start if eta_start is None or np.ndim(eta_start) == 2 else eta_start[part]
            values += self._evaluate_points(theta[part], omega[part], sigma[part], starts, thresholds[part])[
                0
            ]
        return values

    @property
    def points_per_batch(self) -> int:
        """Parameter points whose η̂ :meth:`evaluate_many` finds together (``_BATCH_PREDICTIONS`` values)."""
        q = self.n_eta
        per_point = len(self.subjects) * (1 + 2 * q + q * (q - 1) // 2) * self.data.nmax
        return max(1, _BATCH_PREDICTIONS // per_point)

    def _evaluate_points(
        self,
        theta: np.ndarray,
        omega: np.ndarray,
        sigma: np.ndarray,
        eta_start: np.ndarray | None,
        extrapolate: np.ndarray | None = None,
    ) -> tuple[list[ObjectiveValue], _Context | None, _State | None]:
        """One batch of :meth:`evaluate_many`: the values, and the context and state at η̂ of the valid
        points (None when there is none)."""
        self.n_evaluations += theta.shape[0]
        n = len(self.subjects)
        q = self.n_eta
        nan = ObjectiveValue(math.inf, math.inf, np.full(n, np.inf), np.zeros((n, q)), n)
        values = [nan] * theta.shape[0]
        if not values:
            return values, None, None
        omega_inv, logdet, positive = _omega_terms(omega)
        valid = (
            positive & np.all(np.isfinite(theta), axis=1) & np.all(np.isfinite(sigma) & (sigma > 0), axis=1)
        )
        usable = np.flatnonzero(valid)
        if not usable.size:
            return values, None, None
        ctx = self.context(theta[usable], omega[usable], sigma[usable], omega_inv[usable], logdet[usable])
        if extrapolate is not None and np.any(extrapolate[usable] > 0):
            ctx.extrapolate = np.repeat(extrapolate[usable], n)
        if eta_start is None or self.method == "fo":
            eta_start = np.zeros((n, q))
        eta_start = np.asarray(eta_start, dtype=float)
        if eta_start.ndim == 2:
            start = np.tile(eta_start, (usable.size, 1))
        else:
            start = eta_start[usable].reshape(-1, q)
        eta, st, ok, shift = self.solve_eta(ctx, start)
        half_h = 0.5 * st.hess
        rows = ctx.subject.size
        with np.errstate(invalid="ignore"):
            sign, logdet_h = np.linalg.slogdet(half_h) if q else (np.ones(rows), np.zeros(rows))
        row_ofv = st.objective + np.repeat(ctx.logdet_omega, n) + logdet_h + shift
        if self.method == "fo" and q:
            sol = np.linalg.solve(half_h, st.grad[:, :, None])[:, :, 0]
            row_ofv = row_ofv - 0.25 * np.einsum("mq,mq->m", st.grad, sol)
        row_ofv = np.where((sign > 0) & np.isfinite(row_ofv), row_ofv, np.inf)
        for b, j in enumerate(usable):
            part = slice(b * n, (b + 1) * n)
            ofv = float(np.sum(row_ofv[part]))
            values[j] = ObjectiveValue(
                ofv=ofv,
                minus_2_log_likelihood=ofv + self.data.n_observed * LOG_2PI,
                subject_ofv=row_ofv[part],
                eta=eta[part],
                inner_failures=int(np.sum(~ok[part])),
            )
        return values, ctx, st


def _omega_terms(omega: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``Ω⁻¹`` and ``log det Ω`` of a stack of Ω (B, q, q) by their Cholesky factors, and which Ω are
    positive definite (B,) (the others get Ω⁻¹ = I and log det 0, not to be used)."""
    b, q = omega.shape[0], omega.shape[-1]
    positive = np.ones(b, dtype=bool)
    if q == 0:
        return np.zeros((b, 0, 0)), np.zeros(b), positive
    try:
        chol = np.linalg.cholesky(omega)
    except np.linalg.LinAlgError:  # some are not positive definite: factor them one by one
        chol = np.empty_like(omega)
        for j in range(b):
            try:
                chol[j] = np.linalg.cholesky(omega[j])
            except np.linalg.LinAlgError:
                chol[j] = np.eye(q)
                positive[j] = False
    inv_chol = np.linalg.inv(chol)
    with np.errstate(invalid="ignore", divide="ignore"):
        logdet = 2.0 * np.sum(np.log(np.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
    positive &= np.isfinite(logdet)
    return np.swapaxes(inv_chol, -1, -2) @ inv_chol, logdet, positive


def population_objective(
    problem: PopulationProblem,
    method: Literal["foce-i", "foce", "fo"] = "foce-i",
    theta: dict[str, float] | None = None,
    omega: np.ndarray | None = None,
    sigma: dict[str, float] | None = None,
) -> ObjectiveValue:
    """Evaluate the population objective at given parameters (default: the initial estimates).

    Parameters
    ----------
    problem : PopulationProblem
    method : {"foce-i", "foce", "fo"}
    theta : dict of str to float, optional
        Theta values by name (missing names keep their initial value).
    omega : ndarray, shape (n_eta, n_eta), optional
        Full Ω, rows in the order of ``problem.eta_names``.
    sigma : dict of str to float, optional
        Residual SDs by parameter name (e.g. ``{"y0_add": 0.7}``).

    Returns
    -------
    ObjectiveValue

    Examples
    --------
    >>> from pkmodel.estimation import IndividualParameter, OmegaBlock, ResidualError, Subject, Theta
    >>> import numpy as np
    >>> problem = PopulationProblem(
    ...     [Subject(1, dv=[1.0, 1.4])], [Theta("B", 1.0)],
    ...     [IndividualParameter("B", theta="B", eta="eta_B", eta_form="additive")],
    ...     [OmegaBlock(["eta_B"], [0.5])], [ResidualError("additive", additive=1.0)],
    ...     predict=lambda subject, p: np.full(subject.n_obs, p["B"]))
    >>> # linear in η: exact marginal, V = [[1.5, .5], [.5, 1.5]], r = (0, .4): log 2 + 0.12
    >>> round(population_objective(problem).ofv, 6)
    0.813147
    """
    engine = PopulationObjective(problem, method)
    th, om, sg = engine.space.initial()
    for name, value in (theta or {}).items():
        if name not in engine.space.theta_names:
            raise EstimationError(f"theta {name!r} is not in the problem; known: {engine.space.theta_names}")
        th[engine.space.theta_names.index(name)] = float(value)
    if omega is not None:
        om = np.array(omega, dtype=float)
        if om.shape != (engine.n_eta, engine.n_eta):
            raise EstimationError(f"omega has shape {om.shape}; expected ({engine.n_eta}, {engine.n_eta})")
    for name, value in (sigma or {}).items():
        if name not in engine.space.sigma_names:
            raise EstimationError(f"sigma {name!r} is not in the problem; known: {engine.space.sigma_names}")
        sg[engine.space.sigma_names.index(name)] = float(value)
    value, _, _ = engine.evaluate(th, om, sg)
    return value


class _Outer:
    """The OFV as a function of the optimiser vector, with warm-started η̂ and a central-FD gradient.

    When BFGS asks for the gradient at every point whose value it asks for (its usual line search), a
    point and the 2n points of its central differences are evaluated together, as one batch
    (:meth:`PopulationObjective.evaluate_many`), and the gradient is kept for the call of :meth:`jac`
    that follows; when it asks for values alone (its fallback line search), values alone are computed
    until it asks for a gradient again.  Each η̂ search starts from the last η̂ moved to first order:
    ``η̂(x) + (∂η̂/∂x)·(x' − x)``, with ``∂η̂/∂x`` the central differences of the η̂ of the last stencil
    (none before the first).  Newton's method then needs about one iteration fewer; η̂ itself is the same
    minimiser.
    """

    def __init__(self, engine: PopulationObjective, step: float):
        self.engine = engine
        self.step = step
        self.eta = np.zeros((len(engine.subjects), engine.n_eta))
        # coordinates of x that move the η̂ warm start (see eta_start): all when points are evaluated in
        # batches, else the free θ only (x starts with them)
        moving = np.arange(engine.space.n_free) < int(np.sum(~engine.space.theta_fixed))
        self._moving = np.ones_like(moving) if engine.points_per_batch > 1 else moving
        self._eta_x: np.ndarray | None = None  # where self.eta was found
        self._last: tuple[np.ndarray, ObjectiveValue] | None = None  # the last point evaluated
        self.best = (math.inf, None, None)
        self._gradient: tuple[np.ndarray, np.ndarray] | None = None  # (x, gradient) of the last stencil
        self._with_gradient = True  # compute the gradient along with each value
        self._unused = False  # a gradient computed along with a value has not been asked for
        self.curvature: np.ndarray | None = None  # ∂²OFV/∂x_k² from the last stencil
        self.sensitivity: np.ndarray | None = None  # ∂η̂/∂x (n_subjects, n_eta, n_x) from the last stencil

    def eta_start(self, x: np.ndarray) -> np.ndarray:
        """The warm start of the η̂ at ``x`` (n_x,) → (n_subjects, n_eta), or at points (B, n_x) → (B, ...)
        (see the class docstring)."""
        if self.sensitivity is None or self._eta_x is None:
            return self.eta
        # When points are evaluated one at a time (large problems), only the θ coordinates move the start:
        # a point that moves Ω or σ alone then starts with the parameter sets of the last η̂, whose
        # predictions are remembered (predict_rows), and its first Newton iteration costs no prediction
        # (ESG401 example fit: 885,000 instead of 1,055,000 parameter sets predicted).  In a batch the
        # Newton iterations of all points run together, as many as the slowest point needs, so there
        # every start moves (Theoph: 0.12 instead of 0.14 s CPU).
        dx = np.where(self._moving, np.asarray(x) - self._eta_x, 0.0)
        return self.eta + np.einsum("iqk,...k->...iq", self.sensitivity, dx)

    def fun(self, x: np.ndarray) -> float:
        if self._unused:
            self._with_gradient = False
        return self.evaluate(x, self._with_gradient).ofv

    def jac(self, x: np.ndarray) -> np.ndarray:
        if self._gradient is None or not np.array_equal(x, self._gradient[0]):
            self._with_gradient = True
            self.evaluate(x)
        assert self._gradient is not None
        self._unused = False
        return self._gradient[1].copy()

    def evaluate(self, x: np.ndarray, gradient: bool = True) -> ObjectiveValue:
        """The objective at ``x`` and, with ``gradient``, its gradient, curvatures and η̂ sensitivities
        from the same batch (the value is not recomputed when ``x`` is the last point evaluated)."""
        x = np.array(x, dtype=float)
        if gradient and self._eta_x is None and self._last is None:
            # the first point: a rough η̂ of it alone (from η = 0), then the whole stencil from there (from
            # η = 0 all 2n + 1 points would need the Newton iterations of the hardest one)
            self.eta = self.engine.rough_eta(*self.engine.space.from_x(x[None]))
        known = self._last is not None and np.array_equal(x, self._last[0])
        if gradient and self._gradient is not None and np.array_equal(x, self._gradient[0]):
            gradient = False  # (BFGS asks for the value at its start after the gradient that minimize took)
        points = [] if known else [x]
        steps = self.step * np.maximum(1.0, np.abs(x))
        if gradient:  # x + h_k e_k and x − h_k e_k for each k
            signs = np.tile([1.0, -1.0], x.size)
            points += list(x + signs[:, None] * np.repeat(np.diag(steps), 2, axis=0))
        batch = np.vstack(points) if points else np.zeros((0, x.size))
        # η̂ searches may end with an extrapolated Newton step: the stencil's points' from a Newton
        # decrement of 1e-7, x's own (its value goes to the line search) only from 1e-10
        thresholds = np.full(len(batch), _EXTRAPOLATE_DECREMENT)
        thresholds[: len(points) - (2 * x.size if gradient else 0)] = _EXTRAPOLATE_BASE_DECREMENT
        values = self.engine.evaluate_many(
            *self.engine.space.from_x(batch), self.eta_start(batch), extrapolate=thresholds
        )
        if known:
            assert self._last is not None
            value = self._last[1]
        else:
            value, values = values[0], values[1:]
            self._last = (x, value)
            if math.isfinite(value.ofv):
                self.eta, self._eta_x = value.eta, x
                if value.ofv < self.best[0]:
                    self.best = (value.ofv, x.copy(), value.eta.copy())
        if gradient:
            self._stencil(x, steps, value.ofv, values)
        return value

    def _stencil(self, x: np.ndarray, steps: np.ndarray, base: float, values: list[ObjectiveValue]) -> None:
        """Gradient, curvatures and η̂ sensitivities at ``x`` from the values at x ± h_k e_k."""
        grad = np.zeros(x.size)
        curvature = np.full(x.size, np.nan)
        sensitivity = np.zeros((*self.eta.shape, x.size))
        for k, h in enumerate(steps):
            fp, fm = values[2 * k].ofv, values[2 * k + 1].ofv
            if math.isfinite(fp) and math.isfinite(fm):
                grad[k] = (fp - fm) / (2.0 * h)
                curvature[k] = (fp + fm - 2.0 * base) / (h * h)
                sensitivity[:, :, k] = (values[2 * k].eta - values[2 * k + 1].eta) / (2.0 * h)
            elif math.isfinite(fp):
                grad[k] = (fp - base) / h
            elif math.isfinite(fm):
                grad[k] = (base - fm) / h
        self._gradient = (x, grad)
        self.curvature = curvature
        self.sensitivity = sensitivity
        self._unused = True

    def minimize(self, x0: np.ndarray, gtol: float, max_iterations: int):
        """BFGS from ``x0``, its inverse Hessian started at the diagonal curvature of the first gradient.

        The central differences of the first gradient give ``∂²OFV/∂x_k²`` at no extra cost; starting
        BFGS from ``diag(1/∂²OFV/∂x_k²)`` instead of the identity makes its first steps Newton-like in
        each coordinate (the OFV's curvatures differ by orders of magnitude between θ, Ω and σ), which
        saves iterations; the optimum and the convergence test are unchanged.
        """
        self.jac(x0)
        curvature = self.curvature if self.curvature is not None else np.full(x0.size, np.nan)
        usable = np.isfinite(curvature) & (curvature > 0)
        start = np.diag(np.where(usable, 1.0 / np.where(usable, curvature, 1.0), 1.0))
        return minimize(
            self.fun,
            x0,
            jac=self.jac,
            method="BFGS",
            options={"gtol": gtol, "maxiter": max_iterations, "hess_inv0": start},
        )


def fit_population(
    problem: PopulationProblem,
    method: Literal["foce-i", "foce", "fo"] = "foce-i",
    *,
    covariance: bool = True,
    gtol: float = 1.0e-3,
    max_iterations: int = 500,
    fo_start: bool = False,
) -> PopulationResult:
    """Fit a population model by maximum (approximate) likelihood: FOCE-I, FOCE or FO.

    See the module docstring for the objective.  The optimiser is BFGS on the unconstrained parameters
    with a central finite-difference gradient; the fit counts as converged when the largest gradient
    component (OFV per unit of the transformed parameters, e.g. per unit of log θ) is below ``gtol``
    (BFGS's own test) or, when BFGS stops for loss of precision, below ``10·gtol``, and every η̂
    converged.
    The covariance step (``covariance=True``) differentiates the OFV twice numerically with respect to
    the natural parameters (thetas, Ω elements, residual SDs): ``cov = 2·R⁻¹`` (NONMEM's ``MATRIX=R``).

    Parameters
    ----------
    problem : PopulationProblem
    method : {"foce-i", "foce", "fo"}
        Estimation method.
    covariance : bool
        Run the covariance step.
    gtol : float
        Convergence tolerance on the max-norm of the OFV gradient in the optimiser's space.
    max_iterations : int
        Maximum number of BFGS iterations.
    fo_start : bool
        Start from an FO fit (fast, rough) instead of the initial estimates.

    Returns
    -------
    PopulationResult

    Raises
    ------
    EstimationError
        If the objective is not finite at the initial estimates (the message names the subjects).

    Examples
    --------
    >>> from pkmodel.estimation import IndividualParameter, OmegaBlock, ResidualError, Subject, Theta
    >>> import numpy as np
    >>> rng = np.random.default_rng(1)
    >>> subjects = [Subject(i, dv=10 + rng.normal(0, 2) + rng.normal(0, 1, 4)) for i in range(20)]
    >>> problem = PopulationProblem(
    ...     subjects, [Theta("B", 8.0)],
    ...     [IndividualParameter("B", theta="B", eta="eta_B", eta_form="additive")],
    ...     [OmegaBlock(["eta_B"], [1.0])], [ResidualError("additive", additive=2.0)],
    ...     predict=lambda subject, p: np.full(subject.n_obs, p["B"]))
    >>> result = fit_population(problem)
    >>> result.converged, round(float(result.theta["B"]), 2)
    (True, 10.1)
    """
    with _threadpools().limit(limits=1):  # multi-threaded BLAS is many times slower on these tiny matrices
        return _fit_population(problem, method, covariance, gtol, max_iterations, fo_start)


@functools.cache
def _threadpools() -> ThreadpoolController:
    """The process's BLAS and OpenMP thread pools, found once (the search costs ~1.5 ms a fit)."""
    return ThreadpoolController()


def _fit_population(
    problem: PopulationProblem,
    method: str,
    covariance: bool,
    gtol: float,
    max_iterations: int,
    fo_start: bool,
) -> PopulationResult:
    started = time.perf_counter()
    engine = PopulationObjective(problem, method)
    space = engine.space
    theta0, omega0, sigma0 = space.initial()
    x0 = space.to_x(theta0, omega0, sigma0)
    outer = _Outer(engine, _OUTER_STEP)
    start_value = outer.evaluate(x0)  # also the base point of BFGS's first gradient
    if not math.isfinite(start_value.ofv):
        bad = [problem.subjects[i].id for i in np.flatnonzero(~np.isfinite(start_value.subject_ofv))]
        raise EstimationError(
            f"the objective is not finite at the initial estimates (subjects {bad[:10]}); check that the "
            "predictions are finite and positive where a log-additive error is used, and the initial values"
        )
    messages = []
    if fo_start and method != "fo":
        if engine.data.n_censored:
            messages.append("fo_start skipped: FO cannot use BLQ observations")
        else:
            fo_engine = PopulationObjective(problem, "fo")
            fo_outer = _Outer(fo_engine, _OUTER_STEP)
            fo = fo_outer.minimize(x0, 1e-2, 200)
            fo_x = fo_outer.best[1] if fo_outer.best[1] is not None else fo.x
            th, om, sg = space.from_x(fo_x)
            value, _, _ = engine.evaluate(th, om, sg)
            if math.isfinite(value.ofv) and value.ofv < start_value.ofv:
                x0 = fo_x
                messages.append(f"started from FO estimates (FO OFV {fo_outer.best[0]:.4f})")
    if x0.size:
        opt = outer.minimize(x0, gtol, max_iterations)
        x_best = outer.best[1] if outer.best[1] is not None else opt.x
        eta_best = outer.best[2] if outer.best[2] is not None else outer.eta
        final_grad = opt.jac if np.array_equal(x_best, opt.x) and opt.jac is not None else outer.jac(x_best)
        max_grad = float(np.max(np.abs(final_grad)))
        converged = bool(max_grad <= gtol * 10.0 or opt.success) and bool(np.isfinite(max_grad))
        messages.insert(0, f"{opt.message} (BFGS, {opt.nit} iterations, max |gradient| {max_grad:.2e})")
        n_iterations = int(opt.nit)
    else:
        x_best, eta_best = x0, np.zeros((len(problem.subjects), engine.n_eta))
        converged, n_iterations = True, 0
        messages.insert(0, "no free parameters: objective evaluated at the initial estimates")
    theta, omega, sigma = space.from_x(x_best)
    value, ctx, st = engine.evaluate(theta, omega, sigma, eta_best)
    if value.inner_failures:
        messages.append(f"η̂ did not converge for {value.inner_failures} subject(s)")
    estimation_seconds = time.perf_counter() - started
    cov = None
    if covariance:
        sensitivity = outer.sensitivity

        def eta_start(th: np.ndarray, om: np.ndarray, sg: np.ndarray) -> np.ndarray:
            """η̂ at the estimates moved to first order (∂η̂/∂x of the last gradient) to points (θ, Ω, σ)."""
            if sensitivity is None:
                return value.eta
            try:
                dx = space.to_x(th, om, sg) - x_best
            except np.linalg.LinAlgError:  # an Ω not positive definite (not evaluated): no moves
                return value.eta
            return value.eta + np.einsum("iqk,bk->biq", sensitivity, dx)

        cov = covariance_step(engine, theta, omega, sigma, value.eta, eta_start, _EXTRAPOLATE_DECREMENT)
    return build_population_result(
        engine=engine,
        value=value,
        context=ctx,
        state=st,
        converged=converged and value.inner_failures == 0,
        message="; ".join(messages),
        n_iterations=n_iterations,
        covariance=cov,
        estimation_seconds=estimation_seconds,
        total_seconds=time.perf_counter() - started,
    )
