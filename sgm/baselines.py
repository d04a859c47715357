"""Classical density baselines for a user's own tabular data, in the data's own units.

A score model's held-out NLL means little alone: these three estimators, fitted to the same
training rows, put it next to what a Gaussian, a Gaussian mixture and a kernel density estimate
achieve on the same test points.

- ``"gaussian"``: one full-covariance Gaussian, maximum-likelihood mean and covariance;
- ``"gmm"``: a full-covariance Gaussian mixture (`sklearn.mixture.GaussianMixture`), its number of
  components chosen by validation log-likelihood;
- ``"kde"``: a Gaussian kernel density estimate, its bandwidth chosen by validation
  log-likelihood.

All three are fitted in standardised coordinates ``z = (x - m) / s``, with m and s the per-column
mean and standard deviation of the training rows (a column with zero spread keeps s = 1, as
`sgm.data.Preprocess` does), and report log-densities in data units by the change of variables

    log p_x(x) = log p_z((x - m) / s) - sum_j log s_j.

For the Gaussian this changes nothing (its maximum-likelihood fit is affine-equivariant); for the
mixture and the kernel estimate it makes the covariance floor and the bandwidth grid relative to
each column's spread, so they do not depend on the units the user stored the data in. Scaling the
data by c shifts every log-density by exactly -D log c.

`paired` compares a model with a baseline on the same test points (a paired difference, far less
noisy than the difference of two means); `report` gathers everything as plain JSON-able floats.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable

import numpy as np
from sklearn.mixture import GaussianMixture

from sgm.errors import DataError

NAMES = ("gaussian", "gmm", "kde")
RIDGE = 1e-6  # added to a singular standardised covariance (unit variance per column)
GMM_COMPONENTS = 10  # the largest number of mixture components tried
GMM_INITS = 3
GMM_REG_COVAR = 1e-6  # sklearn's covariance floor, in standardised units
GMM_PATIENCE = 2  # stop adding components after this many without a better validation score
KDE_MAX_TRAIN = 10_000  # kernel centres: a seeded random subset of the training rows beyond this
KDE_MAX_VAL = 2_000  # validation rows that score the bandwidths (the first ones) beyond this
_CHUNK = 2 ** 22  # entries of one block of squared distances (32 MiB of float64)


@dataclasses.dataclass(frozen=True, eq=False)
class Baseline:
    """A fitted density estimator over D-dimensional rows, evaluated in data units.

    Attributes:
        name: one of `NAMES`.
        hyper: its chosen hyperparameters and how they were chosen (JSON-able).
        mean, std: (D,) the training rows' per-column mean and standard deviation (the
            standardisation the estimator was fitted in).
    """

    name: str
    hyper: dict
    mean: np.ndarray
    std: np.ndarray
    _log_prob_z: Callable[[np.ndarray], np.ndarray]

    @property
    def dim(self) -> int:
        return self.mean.shape[0]

    def log_prob(self, x) -> np.ndarray:
        """log p(x) in nats per row, in data units: log p_z((x - m) / s) - sum_j log s_j.

        Arguments:
            x: (N, D) finite rows.

        Returns:
            (N,) float64 log-densities.
        """
        x = _rows(x, "x", dim=self.dim)
        return self._log_prob_z(_standardise(x, self.mean, self.std)) - np.log(self.std).sum()


def fit_baselines(x_train, x_val, *, seed: int = 0) -> dict[str, Baseline]:
    """Fits the Gaussian, the Gaussian mixture and the kernel density estimate.

    Every estimator is fitted on `x_train` alone; the mixture's number of components and the
    kernel's bandwidth are the ones that maximise the mean log-likelihood of `x_val`. The test set
    is never seen here.

    - gaussian: mu, Sigma the maximum-likelihood mean and covariance (divisor N). Where the
      standardised covariance is singular (smallest eigenvalue below 1e-10 of the largest: a
      constant or collinear column), `RIDGE` I is added to it, i.e. RIDGE s_j^2 to column j's
      variance in data units, and `hyper["ridge"]` says so.
    - gmm: `GaussianMixture(k, covariance_type="full", reg_covar=GMM_REG_COVAR)`, one
      k-means initialisation each, for k = 1, 2, ... up to min(`GMM_COMPONENTS`,
      N_train // (D + 1)) (each component's covariance needs D + 1 rows), stopping after
      `GMM_PATIENCE` values of k without a better validation score; the chosen k is then refitted
      with `GMM_INITS` initialisations (sklearn keeps the one of highest training likelihood).
      One EM iteration costs O(k N_train D^2).
    - kde: p_z(z) = (1/n) sum_i N(z; z_i, h^2 I) over standardised training rows z_i, i.e. in
      data units a Gaussian kernel of covariance h^2 diag(s^2) on every training row:

          log p_x(x) = logsumexp_i(-|z - z_i|^2 / (2 h^2)) - log n - D log h - (D/2) log(2 pi)
                       - sum_j log s_j,   z = (x - m) / s.

      h is searched on a log grid around Scott's factor n^(-1/(D+4)): whole octaves from 2^-6
      to 2^3 times it, then quarter octaves around the best. At most `KDE_MAX_TRAIN` rows (a
      random subset drawn with `seed`) serve as centres and the first `KDE_MAX_VAL` validation
      rows score the bandwidths, which bounds the cost at O(rows x centres x D). The sum is
      evaluated exactly in float64 (`sklearn.neighbors.KernelDensity`'s tree evaluation is not
      used: its log-densities are far off for points in the tails once D reaches a few tens).

    Arguments:
        x_train: (N_train, D) finite training rows in data units, N_train >= D + 1.
        x_val: (N_val, D) finite validation rows, N_val >= 2.
        seed: seeds the mixture's initialisations and the kernel centres' subset.

    Returns:
        {"gaussian": ..., "gmm": ..., "kde": ...}, each a `Baseline` whose `hyper` holds
        gaussian: `ridge`; gmm: `n_components`, `reg_covar`, `n_init` and the validation NLL per
        dimension (data units) of every k tried; kde: `bandwidth` h (standardised units: column
        j's kernel has standard deviation h s_j), Scott's factor, the numbers of centres and of
        validation rows used, and the chosen h's validation NLL per dimension.
    """
    x_train = _rows(x_train, "x_train")
    dim = x_train.shape[1]
    x_val = _rows(x_val, "x_val", dim=dim)
    if x_train.shape[0] < dim + 1:
        raise DataError(f"x_train has {x_train.shape[0]} rows: the Gaussian baseline needs at "
                        f"least D + 1 = {dim + 1}.")
    if x_val.shape[0] < 2:
        raise DataError(f"x_val has {x_val.shape[0]} rows: the baselines' hyperparameters need "
                        "at least 2 validation rows.")
    mean = x_train.mean(0)
    std = x_train.std(0)
    std = np.where(std > 0, std, 1.0)
    z_train = _standardise(x_train, mean, std)
    z_val = _standardise(x_val, mean, std)
    jac = float(np.log(std).sum())  # nll in data units = nll in standardised units + jac
    fits = {"gaussian": _gaussian(z_train), "gmm": _gmm(z_train, z_val, seed, jac),
            "kde": _kde(z_train, z_val, seed, jac)}
    return {name: Baseline(name, hyper, mean, std, fn) for name, (fn, hyper) in fits.items()}


def paired(model_logp, baseline_logp, *, dim: int) -> dict:
    """The model against a baseline on the same test points, per dimension.

    With d_n = (nll_model(x_n) - nll_baseline(x_n)) / D = (log p_baseline(x_n) - log
    p_model(x_n)) / D, returns the mean of d and its standard error std(d, ddof=1) / sqrt(N);
    negative means the model is better.

    Arguments:
        model_logp: (N,) the model's log-densities of the test points, nats per sample.
        baseline_logp: (N,) the baseline's of the same points, in the same units.
        dim: D, the number of dimensions of one point.

    Returns:
        {"diff": mean d, "stderr": its standard error, "model_nll_per_dim": mean -log p_model / D,
        "baseline_nll_per_dim": mean -log p_baseline / D, "n": N}.
    """
    a = _logp(model_logp, "model_logp")
    b = _logp(baseline_logp, "baseline_logp", n=a.shape[0])
    if a.shape[0] < 2:
        raise DataError(f"model_logp has {a.shape[0]} points: a standard error needs at least 2.")
    if not (isinstance(dim, (int, np.integer)) and dim >= 1):
        raise DataError(f"dim={dim!r} is invalid: expected the number of dimensions, >= 1.")
    d = (b - a) / dim
    return {"diff": float(d.mean()), "stderr": float(d.std(ddof=1) / math.sqrt(d.shape[0])),
            "model_nll_per_dim": float(-a.mean() / dim),
            "baseline_nll_per_dim": float(-b.mean() / dim), "n": int(d.shape[0])}


def log_probs(baselines: dict[str, Baseline], x) -> dict[str, np.ndarray]:
    """Every baseline's log-densities (N,) of the rows `x` (N, D), nats per sample, data units."""
    return {name: b.log_prob(x) for name, b in baselines.items()}


def report(baselines: dict[str, Baseline], x_test, model_logp=None, *,
           logps: dict[str, np.ndarray] | None = None) -> dict:
    """Every baseline's test NLL, its hyperparameters and its paired difference to the model.

    Arguments:
        baselines: as `fit_baselines` returns them.
        x_test: (N, D) finite test rows in data units, N >= 2.
        model_logp: (N,) the model's log-densities of `x_test` in nats per sample (data units),
            or None for the baselines alone.
        logps: the baselines' log-densities of `x_test` where the caller has them already
            (`log_probs`); computed here otherwise.

    Returns:
        {name: {"nll": mean NLL per sample, "nll_per_dim": the same / D, "nll_stderr": standard
        error of nll_per_dim, "hyper": ..., and with a model "diff": `paired`'s mean
        (model minus baseline, per dimension; negative: the model is better), "diff_stderr"}},
        plain floats throughout.
    """
    x_test = _rows(x_test, "x_test")
    n, dim = x_test.shape
    if n < 2:
        raise DataError(f"x_test has {n} rows: a standard error needs at least 2.")
    if model_logp is not None:
        model_logp = _logp(model_logp, "model_logp", n=n)
    logps = log_probs(baselines, x_test) if logps is None else logps
    out = {}
    for name, b in baselines.items():
        logp = np.asarray(logps[name], np.float64)
        row = {"nll": float(-logp.mean()), "nll_per_dim": float(-logp.mean() / dim),
               "nll_stderr": float(logp.std(ddof=1) / math.sqrt(n) / dim),
               "hyper": copy.deepcopy(b.hyper)}
        if model_logp is not None:
            p = paired(model_logp, logp, dim=dim)
            row["diff"], row["diff_stderr"] = p["diff"], p["stderr"]
        out[name] = row
    return out


# ------------------------------------------------------------------------------------------------
# The three estimators, in standardised coordinates: each returns (log p_z, hyperparameters)
# ------------------------------------------------------------------------------------------------


def _gaussian(z: np.ndarray):
    mu = z.mean(0)
    cov = np.atleast_2d(np.cov(z, rowvar=False, bias=True))
    eig = np.linalg.eigvalsh(cov)
    ridge = RIDGE if eig[0] <= 1e-10 * eig[-1] else 0.0
    chol = np.linalg.cholesky(cov + ridge * np.eye(cov.shape[0]))
    log_det = 2.0 * np.log(np.diag(chol)).sum()
    norm = 0.5 * (cov.shape[0] * math.log(2.0 * math.pi) + log_det)

    def log_prob(q: np.ndarray) -> np.ndarray:
        w = np.linalg.solve(chol, (q - mu).T)  # triangular, solved densely: D is small
        return -0.5 * (w ** 2).sum(0) - norm

    return log_prob, {"ridge": ridge}


def _gmm(z: np.ndarray, z_val: np.ndarray, seed: int, jac: float):
    most = max(1, min(GMM_COMPONENTS, z.shape[0] // (z.shape[1] + 1)))

    def mixture(k: int, inits: int) -> GaussianMixture:
        return GaussianMixture(k, covariance_type="full", reg_covar=GMM_REG_COVAR, n_init=inits,
                               max_iter=500, random_state=seed).fit(z)

    scores, best, since = {}, 1, 0
    for k in range(1, most + 1):
        scores[k] = float(mixture(k, 1).score_samples(z_val).mean())
        if scores[k] > scores[best]:
            best, since = k, 0
        elif k > 1:
            since += 1
            if since >= GMM_PATIENCE:
                break
    dim = z.shape[1]
    hyper = {"n_components": best, "reg_covar": GMM_REG_COVAR, "n_init": GMM_INITS,
             "val_nll_per_dim": {str(k): (jac - s) / dim for k, s in scores.items()}}
    return mixture(best, GMM_INITS).score_samples, hyper


def _kde_logp(centres: np.ndarray, q: np.ndarray, hs: np.ndarray) -> np.ndarray:
    """(len(hs), N) log-densities of rows q under the Gaussian KDE on `centres`, one per bandwidth.

    logsumexp_i(-|q - c_i|^2 / (2 h^2)) - log n - D log h - (D/2) log 2 pi, in blocks of rows.
    """
    n, dim = centres.shape
    cc = (centres ** 2).sum(1)
    out = np.empty((hs.shape[0], q.shape[0]))
    step = max(1, _CHUNK // n)
    for a in range(0, q.shape[0], step):
        b = q[a:a + step]
        d2 = np.maximum((b ** 2).sum(1)[:, None] + cc[None] - 2.0 * b @ centres.T, 0.0)
        for j, h in enumerate(hs):
            e = np.multiply(d2, -0.5 / h ** 2)
            top = e.max(1)
            e -= top[:, None]
            np.exp(e, out=e)
            out[j, a:a + step] = top + np.log(e.sum(1))
    return out - (math.log(n) + dim * np.log(hs) + 0.5 * dim * math.log(2.0 * math.pi))[:, None]


def _kde(z: np.ndarray, z_val: np.ndarray, seed: int, jac: float):
    n_all, dim = z.shape
    if n_all > KDE_MAX_TRAIN:
        z = z[np.sort(np.random.default_rng(seed).choice(n_all, KDE_MAX_TRAIN, replace=False))]
    z_val = z_val[:KDE_MAX_VAL]
    scott = z.shape[0] ** (-1.0 / (dim + 4))

    def best_of(octaves: np.ndarray) -> tuple[float, float]:
        scores = _kde_logp(z, z_val, scott * 2.0 ** octaves).mean(1)
        i = int(np.argmax(scores))
        return float(octaves[i]), float(scores[i])

    coarse, _ = best_of(np.arange(-6.0, 3.5))
    fine, score = best_of(coarse + np.arange(-0.75, 0.8, 0.25))
    h = float(scott * 2.0 ** fine)

    def log_prob(q: np.ndarray) -> np.ndarray:
        return _kde_logp(z, q, np.array([h]))[0]

    return log_prob, {"bandwidth": h, "scott": float(scott), "centres": int(z.shape[0]),
                      "val_rows": int(z_val.shape[0]), "val_nll_per_dim": (jac - score) / dim}


# ------------------------------------------------------------------------------------------------
# Checks
# ------------------------------------------------------------------------------------------------


def _standardise(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return (x - mean) / std


def _rows(x, name: str, *, dim: int | None = None) -> np.ndarray:
    """`x` as a finite float64 (N, D) array (D = `dim` where given), else one DataError."""
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{name} is not numeric: expected a 2-D array of floats.") from None
    if a.ndim != 2 or a.shape[1] == 0:
        raise DataError(f"{name} has shape {a.shape}: expected 2-D rows (N, D) with D >= 1.")
    if dim is not None and a.shape[1] != dim:
        raise DataError(f"{name} has {a.shape[1]} columns: expected {dim}, as the training rows.")
    if not np.all(np.isfinite(a)):
        raise DataError(f"{name} holds NaN or inf: expected finite values.")
    return a


def _logp(v, name: str, *, n: int | None = None) -> np.ndarray:
    """`v` as a finite float64 (N,) array (N = `n` where given), else one DataError."""
    try:
        a = np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{name} is not numeric: expected log-densities of shape (N,).") from None
    if a.ndim != 1 or (n is not None and a.shape[0] != n):
        want = "(N,)" if n is None else f"({n},), one per test point"
        raise DataError(f"{name} has shape {a.shape}: expected {want}.")
    if not np.all(np.isfinite(a)):
        raise DataError(f"{name} holds NaN or inf: expected finite log-densities.")
    return a
