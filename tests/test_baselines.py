"""The classical density baselines (`sgm.baselines`): closed forms for the Gaussian, the entropy of
Gaussian data for all three, the change of variables of the standardisation, the mixture's choice
of components, the paired difference on a hand example, and the refusals."""

import json
import math

import numpy as np
import pytest
from scipy.stats import multivariate_normal
from sklearn.neighbors import KernelDensity

from sgm import baselines
from sgm.errors import DataError

MU = np.array([1.0, -2.0, 0.5])
SD = np.array([0.5, 2.0, 10.0])  # unequal units: the standardisation matters
CORR = np.array([[1.0, 0.6, -0.3], [0.6, 1.0, 0.2], [-0.3, 0.2, 1.0]])
COV = CORR * np.outer(SD, SD)


def _gaussian_rows(n, seed, mu=MU, cov=COV):
    return np.random.default_rng(seed).multivariate_normal(mu, cov, size=n)


def _one_sentence(e) -> str:
    text = str(e.value)
    assert "\n" not in text and text.endswith(".")
    return text


# ------------------------------------------------------------------------- closed forms


def test_gaussian_is_the_maximum_likelihood_gaussian():
    x = _gaussian_rows(400, 0)
    fit = baselines.fit_baselines(x[:300], x[300:350])["gaussian"]
    ref = multivariate_normal(x[:300].mean(0), np.cov(x[:300], rowvar=False, bias=True))
    np.testing.assert_allclose(fit.log_prob(x[350:]), ref.logpdf(x[350:]), rtol=1e-10)
    assert fit.hyper == {"ridge": 0.0}


def test_gaussian_adds_a_ridge_only_to_a_singular_covariance():
    x = _gaussian_rows(300, 1)
    x = np.c_[x, x[:, 0] - 2.0 * x[:, 1]]  # a collinear fourth column
    fit = baselines.fit_baselines(x[:200], x[200:250])["gaussian"]
    assert fit.hyper["ridge"] == baselines.RIDGE
    assert np.all(np.isfinite(fit.log_prob(x[250:])))


def test_kde_is_the_gaussian_kernel_sum_in_data_units():
    """p(x) = (1/n) sum_i N(x; x_i, h^2 diag(s^2)), summed directly; and sklearn's KernelDensity
    on the standardised rows agrees where its tree evaluation is exact (low D)."""
    x = _gaussian_rows(260, 2)
    train, val, test = x[:200], x[200:240], x[240:]
    fit = baselines.fit_baselines(train, val)["kde"]
    h, s = fit.hyper["bandwidth"], train.std(0)
    direct = np.log(np.mean([multivariate_normal(c, np.diag((h * s) ** 2)).pdf(test)
                             for c in train], axis=0))
    np.testing.assert_allclose(fit.log_prob(test), direct, rtol=1e-10)
    z_train, z_test = (train - train.mean(0)) / s, (test - train.mean(0)) / s
    sk = KernelDensity(bandwidth=h).fit(z_train).score_samples(z_test) - np.log(s).sum()
    np.testing.assert_allclose(fit.log_prob(test), sk, rtol=1e-8)


def test_kde_is_exact_far_in_the_tails_of_thirty_dimensions():
    """Where every kernel term underflows float64 (|z - z_i|^2 / 2h^2 > 745), the log-density is
    still the logsumexp of the kernel terms."""
    rng = np.random.default_rng(3)
    centres, q = rng.normal(size=(50, 30)), 6.0 * rng.normal(size=(5, 30))
    h = np.array([0.2])
    d2 = ((q[:, None] - centres[None]) ** 2).sum(-1)
    ref = (np.logaddexp.reduce(-0.5 * d2 / h[0] ** 2, axis=1) - math.log(50)
           - 30 * math.log(h[0]) - 15 * math.log(2 * math.pi))
    np.testing.assert_allclose(baselines._kde_logp(centres, q, h)[0], ref, rtol=1e-12)
    assert ref.max() < -1e3


@pytest.mark.parametrize("name", baselines.NAMES)
def test_scaling_the_data_shifts_log_prob_by_the_log_jacobian(name):
    """x -> 10 x leaves the standardised rows unchanged, so log p shifts by exactly -D log 10."""
    x = _gaussian_rows(500, 4)
    a = baselines.fit_baselines(x[:350], x[350:450])[name]
    b = baselines.fit_baselines(10.0 * x[:350], 10.0 * x[350:450])[name]
    np.testing.assert_allclose(b.log_prob(10.0 * x[450:]), a.log_prob(x[450:]) - 3 * math.log(10),
                               rtol=1e-9, atol=1e-9)
    a.hyper.pop("val_nll_per_dim", None)  # in data units: shifted by log 10
    b.hyper.pop("val_nll_per_dim", None)
    assert b.hyper == a.hyper


# ------------------------------------------------------------------- the entropy of Gaussian data


@pytest.fixture(scope="module")
def large_gaussian():
    x = _gaussian_rows(30000, 5)
    train, val, test = x[:20000], x[20000:25000], x[25000:]
    fits = baselines.fit_baselines(train, val)
    truth = multivariate_normal(MU, COV).logpdf(test)
    return fits, test, truth


def _logdet(a):
    return np.linalg.slogdet(a)[1]


def _kde_bounds(h: float, n: int, d: int) -> tuple[float, float]:
    """The KDE's expected excess NLL over the truth, per dimension, for N(0, R) data in
    standardised units (R = CORR), at bandwidth h with n centres: (bias, variance term).

    E p_hat = p * K_h = N(0, S), S = R + h^2 I, so by Jensen E[-log p_hat] >= -log E p_hat and the
    excess is at least KL(N(0, R) || N(0, S)) (bias). The second-order (delta-method) term of
    E[-log p_hat] adds E_p[Var p_hat / (2 p_h^2)] with
    Var p_hat(x) = ((4 pi h^2)^(-D/2) N(x; 0, T) - p_h(x)^2) / n, T = R + h^2 I / 2, a Gaussian
    integral: E_p[N(x; 0, T) / N(x; 0, S)^2] = (2 pi)^(D/2) det S / sqrt(det R det T det M),
    M = R^-1 + T^-1 - 2 S^-1. It is an asymptotic estimate, not a strict bound (the tails, where
    p_hat's relative variance is not small, are where it is least accurate), so the test allows
    three standard errors of the paired difference beyond it.
    """
    eye = np.eye(d)
    s, t = CORR + h * h * eye, CORR + 0.5 * h * h * eye
    bias = 0.5 * (np.trace(np.linalg.solve(s, CORR)) - d + _logdet(s) - _logdet(CORR))
    m = np.linalg.inv(CORR) + np.linalg.inv(t) - 2.0 * np.linalg.inv(s)
    ratio = math.exp(0.5 * d * math.log(2 * math.pi) + _logdet(s)
                     - 0.5 * (_logdet(CORR) + _logdet(t) + _logdet(m)))
    var = ((4 * math.pi * h * h) ** (-d / 2) * ratio - 1.0) / (2 * n)
    return bias / d, var / d


def test_every_baseline_is_near_the_entropy_of_gaussian_data(large_gaussian):
    fits, test, truth = large_gaussian
    d = test.shape[1]
    entropy = 0.5 * np.linalg.slogdet(2 * math.pi * math.e * COV)[1] / d
    se = truth.std(ddof=1) / math.sqrt(truth.shape[0]) / d
    assert abs(-truth.mean() / d - entropy) < 4 * se  # the test points are typical
    gaps = {}
    for name, fit in fits.items():
        p = baselines.paired(truth, fit.log_prob(test), dim=d)
        gaps[name] = (-p["diff"], p["stderr"], p["baseline_nll_per_dim"] - entropy)
    # the ML Gaussian's expected KL is (D + D(D+1)/2) / (2 N D) = 7.5e-5 nats/dim here
    assert abs(gaps["gaussian"][0]) < 3 * gaps["gaussian"][1] + 1e-4
    assert abs(gaps["gaussian"][2]) < 0.01
    assert -3 * gaps["gmm"][1] < gaps["gmm"][0] < 0.002
    assert abs(gaps["gmm"][2]) < 0.02
    hyper = fits["kde"].hyper
    bias, var = _kde_bounds(hyper["bandwidth"], hyper["centres"], d)
    gap, gap_se, off = gaps["kde"]
    assert bias - 3 * gap_se < gap < bias + var + 3 * gap_se, (gap, bias, var)
    assert abs(off) < bias + var + 4 * se


# ------------------------------------------------------------------------- the mixture's components


def test_gmm_picks_several_components_on_separated_clusters_and_one_on_a_gaussian():
    rng = np.random.default_rng(6)
    centres = np.array([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0]])
    x = centres[rng.integers(0, 3, 1500)] + rng.normal(size=(1500, 2))
    mixed = baselines.fit_baselines(x[:1000], x[1000:])["gmm"]
    assert mixed.hyper["n_components"] >= 3
    y = rng.normal(size=(1500, 2))
    single = baselines.fit_baselines(y[:1000], y[1000:])["gmm"]
    assert single.hyper["n_components"] <= 2
    assert set(single.hyper["val_nll_per_dim"]) >= {"1", "2"}


# ------------------------------------------------------------------------- paired, report


def test_paired_on_a_hand_example():
    model = np.array([-1.0, -2.0, -3.0, -4.0])
    base = np.full(4, -2.0)
    p = baselines.paired(model, base, dim=2)
    # d = (nll_model - nll_baseline) / 2 = (-0.5, 0, 0.5, 1): mean 0.25, std 0.6455 / sqrt(4)
    assert p["diff"] == pytest.approx(0.25)
    assert p["stderr"] == pytest.approx(math.sqrt(1.25 / 3) / 2)
    assert p["model_nll_per_dim"] == pytest.approx(1.25)
    assert p["baseline_nll_per_dim"] == pytest.approx(1.0)
    assert p["n"] == 4


def test_report_is_plain_json_with_the_paired_difference():
    x = _gaussian_rows(400, 7)
    fits = baselines.fit_baselines(x[:250], x[250:300])
    test = x[300:]
    model = multivariate_normal(MU, COV).logpdf(test)
    rep = baselines.report(fits, test, model)
    assert set(rep) == set(baselines.NAMES)
    assert json.loads(json.dumps(rep)) == rep
    for name, row in rep.items():
        logp = fits[name].log_prob(test)
        assert row["nll"] == pytest.approx(-logp.mean())
        assert row["nll_per_dim"] == pytest.approx(-logp.mean() / 3)
        p = baselines.paired(model, logp, dim=3)
        assert (row["diff"], row["diff_stderr"]) == pytest.approx((p["diff"], p["stderr"]))
    alone = baselines.report(fits, test)
    assert "diff" not in alone["kde"] and alone["kde"]["nll"] == rep["kde"]["nll"]


# ------------------------------------------------------------------------- refusals

GOOD = _gaussian_rows(60, 8)


@pytest.mark.parametrize("train, val, what", [
    (GOOD[:, 0], GOOD[:5], "shape"),
    (np.full((40, 3), "a", dtype=object), GOOD[:5], "not numeric"),
    (np.where(np.arange(120).reshape(40, 3) == 7, np.nan, GOOD[:40]), GOOD[:5], "NaN"),
    (GOOD[:40], GOOD[:5, :2], "columns"),
    (GOOD[:3], GOOD[40:45], "D + 1"),
    (GOOD[:40], GOOD[40:41], "at least 2"),
    (GOOD[:40], np.full((4, 3), np.inf), "NaN or inf"),
])
def test_fit_refuses_bad_inputs(train, val, what):
    with pytest.raises(DataError) as e:
        baselines.fit_baselines(train, val)
    assert what in _one_sentence(e)


def test_log_prob_paired_and_report_refuse_bad_inputs():
    fits = baselines.fit_baselines(GOOD[:40], GOOD[40:50])
    test = GOOD[50:]
    with pytest.raises(DataError) as e:
        fits["gaussian"].log_prob(test[:, :2])
    assert "columns" in _one_sentence(e)
    with pytest.raises(DataError) as e:
        baselines.paired(np.zeros(5), np.zeros(4), dim=3)
    assert "(5,)" in _one_sentence(e)
    with pytest.raises(DataError) as e:
        baselines.paired(np.zeros(4), np.array([0.0, -np.inf, 0.0, 0.0]), dim=3)
    assert "NaN or inf" in _one_sentence(e)
    with pytest.raises(DataError):
        baselines.paired(np.zeros(1), np.zeros(1), dim=3)
    with pytest.raises(DataError):
        baselines.paired(np.zeros(4), np.zeros(4), dim=0)
    with pytest.raises(DataError) as e:
        baselines.report(fits, test, np.zeros(test.shape[0] + 1))
    assert "one per test point" in _one_sentence(e)
