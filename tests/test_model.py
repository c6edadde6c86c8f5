"""stages/model.py: design matrix, fit/save/load/predict for every model type, determinism."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stages import model as m
from stages.common import BadInputError, parse_section
from stages.encoding import n_rows, read_table
from tests.conftest import PROJECT_PARAMS, ROOT, encoded_months


def model_params(**changes):
    raw = PROJECT_PARAMS["model"] | changes
    if raw["type"] == "xgboost":  # a small forest keeps the unit test fast
        raw["xgboost"] = raw["xgboost"] | {"n_rounds": 30}
    return parse_section("model", raw)


@pytest.fixture(scope="module")
def data(small_tlc: Path) -> tuple[dict, dict, dict]:
    encoders, (train, validation) = encoded_months(small_tlc, "2025-01", "2025-02")
    return train, validation, encoders


def test_linear_design_shape_nnz_and_int32(data):
    train, _, encoders = data
    X = m.linear_design(train, encoders)
    widths = m.linear_blocks(encoders)
    assert X.shape == (n_rows(train), sum(widths.values()) + len(m.NUMERIC_COLUMNS))
    assert X.nnz == n_rows(train) * (len(widths) + len(m.NUMERIC_COLUMNS))
    assert X.indices.dtype == np.int32 and X.indptr.dtype == np.int32
    assert X.has_canonical_format
    # one 1 in each one-hot block per row
    offsets = np.cumsum([0, *widths.values()])
    dense_blocks = X[:, : offsets[-1]].toarray()
    for lo, hi in zip(offsets[:-1], offsets[1:], strict=True):
        assert (dense_blocks[:, lo:hi].sum(axis=1) == 1).all()
    np.testing.assert_array_equal(X[:, -2].toarray().ravel(), train["trip_distance"])
    np.testing.assert_array_equal(X[:, -1].toarray().ravel(), m.log1p(train["trip_distance"]))


@pytest.mark.parametrize("kind", ["ridge", "lasso", "xgboost"])
def test_fit_save_load_predict_round_trip(kind, data, tmp_path):
    train, validation, encoders = data
    params = model_params(type=kind, alpha=0.05 if kind == "lasso" else 1.0)
    fitted = m.fit(train, encoders, params, seed=42, threads=1)
    path = tmp_path / "model.json"
    m.save(fitted, path)
    loaded = m.load(path)
    assert loaded["type"] == kind
    before = m.predict(fitted, validation, encoders, threads=1)
    after = m.predict(loaded, validation, encoders, threads=1)
    np.testing.assert_array_equal(before, after)
    # It has learnt something real: better than predicting the training mean.
    y = validation[m.TARGET]
    rmse = np.sqrt(np.mean((after - y) ** 2))
    baseline = np.sqrt(np.mean((train[m.TARGET].mean() - y) ** 2))
    assert rmse < 0.8 * baseline
    if kind == "xgboost":
        import xgboost as xgb

        booster = xgb.Booster()
        booster.load_model(str(path))  # XGBoost's own JSON, no pickle
        assert booster.num_boosted_rounds() == 30


def test_ridge_matches_dense_normal_equations(data):
    train, _, encoders = data
    alpha = 1.0
    fitted = m.fit(train, encoders, model_params(type="ridge", alpha=alpha), seed=0, threads=1)
    X = m.linear_design(train, encoders).toarray()
    y = train[m.TARGET]
    Xc, yc = X - X.mean(axis=0), y - y.mean()
    coef = np.linalg.solve(Xc.T @ Xc + alpha * np.eye(X.shape[1]), Xc.T @ yc)
    np.testing.assert_allclose(fitted["coef"], coef, atol=1e-6)


@pytest.mark.parametrize("kind", ["ridge", "lasso", "xgboost"])
def test_same_params_give_byte_identical_model_file(kind, data, tmp_path):
    train, _, encoders = data
    params = model_params(type=kind, alpha=0.05 if kind == "lasso" else 1.0)
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for path in paths:
        m.save(m.fit(train, encoders, params, seed=42, threads=2), path)
    assert paths[0].read_bytes() == paths[1].read_bytes()


def test_lasso_with_alpha_zero_is_refused(data):
    train, _, encoders = data
    with pytest.raises(BadInputError, match="model.alpha"):
        m.fit(train, encoders, model_params(type="lasso", alpha=0.0), seed=42, threads=1)


def test_load_refuses_a_non_model(tmp_path):
    path = tmp_path / "model.json"
    path.write_text('{"type": "forest"}')
    with pytest.raises(BadInputError, match="forest"):
        m.load(path)
    path.write_text("not json")
    with pytest.raises(BadInputError, match="model.json"):
        m.load(path)


def test_linear_model_and_other_encoders_disagree(data):
    train, validation, encoders = data
    fitted = m.fit(train, encoders, model_params(type="ridge"), seed=42, threads=1)
    fewer = encoders | {"pairs": encoders["pairs"][:-1]}
    with pytest.raises(BadInputError, match="retrain"):
        m.predict(fitted, validation, fewer, threads=1)


def test_xgb_row_order_sorts_by_zones_then_distance_stably(data) -> None:
    train, _, _ = data
    order = m.xgb_row_order(train)
    assert sorted(order) == list(range(n_rows(train)))
    frame = pd.DataFrame(train)
    expected = frame.sort_values(
        ["pickup_zone_code", "dropoff_zone_code", "trip_distance"], kind="stable"
    )
    assert np.array_equal(order, expected.index.to_numpy())


def test_slot_moments_equal_the_sparse_products(data) -> None:
    train, _, encoders = data
    slots = m.design(train, encoders)
    X = m.linear_design(train, encoders)
    assert slots.shape == X.shape
    y = train[m.TARGET]
    # Chunks far smaller than the table: the sums across chunks are the whole table's.
    for chunk_rows in (m.CHUNK_ROWS, 997):
        moments = m.linear_moments(train, encoders, y, chunk_rows=chunk_rows)
        assert moments.rows == n_rows(train)
        np.testing.assert_allclose(moments.gram.toarray(), (X.T @ X).toarray(), rtol=1e-12)
        mean_x = np.asarray(X.mean(axis=0)).ravel()
        np.testing.assert_allclose(moments.mean_x, mean_x, rtol=1e-12)
        assert moments.mean_y == pytest.approx(y.mean(), rel=1e-12)
        expected = X.T @ y - X.shape[0] * mean_x * y.mean()
        np.testing.assert_allclose(moments.moment, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kind", ["ridge", "lasso"])
def test_linear_predict_is_the_design_product_bit_for_bit(kind, data):
    """Gathered coefficients, chunk by chunk, equal the CSR product exactly."""
    train, validation, encoders = data
    model = m.fit(train, encoders, model_params(type=kind, alpha=0.05), seed=42, threads=1)
    expected = m.linear_design(validation, encoders) @ np.asarray(model["coef"])
    expected = expected + model["intercept"]
    for chunk_rows in (m.CHUNK_ROWS, 997):
        predicted = m.linear_predict(model, validation, encoders, chunk_rows=chunk_rows)
        np.testing.assert_array_equal(predicted, expected)


def _output_of(script: str, *args: object, env: dict[str, str] | None = None) -> str:
    """What `script` prints, run by a fresh Python in the project with `args` (and `env` over
    this environment); its stderr shown if it fails."""
    proc = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


# A fit on the sampled January, in a fresh process: numpy and OpenBLAS pick their CPU kernels
# when they load, so each CPU below needs its own process.
FIT_IN_A_PROCESS = """
import hashlib, sys
from pathlib import Path
from stages import model as m
from stages.common import parse_section
from tests.conftest import PROJECT_PARAMS, encoded_months
encoders, (train,) = encoded_months(Path(sys.argv[1]), "2025-01")
for kind, alpha in (("ridge", 1.0), ("lasso", 0.05)):
    params = parse_section("model", PROJECT_PARAMS["model"] | {"type": kind, "alpha": alpha})
    path = Path(sys.argv[2]) / f"{kind}.json"
    m.save(m.fit(train, encoders, params, seed=42, threads=2), path)
    print(kind, hashlib.md5(path.read_bytes()).hexdigest())
"""
# What a teammate's x86-64 CPU may run, forced on this one: OpenBLAS's kernels for an older
# CPU family (OPENBLAS_CORETYPE), numpy's baseline loops (SSE4.2: neither AVX2/FMA nor
# AVX-512; numpy accepts disabling what this CPU lacks) and threads. Disabling X86_V3 alone
# left numpy's AVX-512 loops on, where a CPU has them.
NUMPY_BASELINE_ONLY = {"NPY_DISABLE_CPU_FEATURES": "X86_V3,X86_V4,AVX512_ICL,AVX512_SPR"}
OTHER_CPUS = {
    "this machine": {},
    "Sandybridge kernels (AVX, no AVX2)": {"OPENBLAS_CORETYPE": "Sandybridge"},
    "Prescott kernels (SSE3), numpy's baseline loops": {
        "OPENBLAS_CORETYPE": "Prescott",
        **NUMPY_BASELINE_ONLY,
    },
    "one BLAS thread": {"OPENBLAS_NUM_THREADS": "1"},
}


def test_linear_models_are_byte_identical_on_other_cpu_kernels(small_tlc: Path, tmp_path: Path):
    """The ridge and lasso files do not depend on the CPU's BLAS or SIMD kernels: a teammate
    who reproduces a model from its data gets the same bytes, not only the same metrics (the
    sums behind them are numpy's pairwise sums, in one order on every CPU, not BLAS's; the
    log distance is `m.log1p`, not numpy's SIMD log1p)."""
    digests = {}
    for cpu, env in OTHER_CPUS.items():
        out = tmp_path / str(len(digests))
        out.mkdir()
        digests[cpu] = _output_of(FIT_IN_A_PROCESS, small_tlc, out, env=env).split()
    assert len({tuple(d) for d in digests.values()}) == 1, digests


LOG1P_IN_A_PROCESS = """
import hashlib, sys
import numpy as np
from stages import model as m
print(hashlib.md5(m.log1p(np.load(sys.argv[1])).tobytes()).hexdigest())
"""


def test_log1p_is_the_c_librarys_within_an_ulp_and_the_same_bits_on_numpys_other_loops(
    small_tlc: Path, tmp_path: Path
) -> None:
    import math

    distances = read_table(small_tlc / "green_tripdata_2025-01.parquet", ["trip_distance"])
    real = distances["trip_distance"]
    rng = np.random.default_rng(0)
    values = np.concatenate(
        [
            real[~np.isnan(real)],  # real ones, some 0 or huge
            rng.uniform(0, 1e-3, 20_000),
            np.ldexp(rng.uniform(0.5, 1, 20_000), rng.integers(-1000, 1000, 20_000)),
            rng.uniform(-0.999, 0, 20_000),
            [np.nextafter(-1.0, 0.0), 5e-324, 1e308],
        ]
    )
    ours = m.log1p(values)
    c_library = np.array([math.log1p(v) for v in values])
    np.testing.assert_array_max_ulp(ours, c_library, maxulp=1)
    assert np.mean(ours == c_library) > 0.9
    special = m.log1p(np.array([0.0, -0.0, np.inf, -1.0, -2.0, np.nan]))
    np.testing.assert_array_equal(special, [0.0, -0.0, np.inf, -np.inf, np.nan, np.nan])
    assert np.signbit(special[1]) and not np.signbit(special[0])
    pairs = values[: len(values) // 2 * 2].reshape(-1, 2)
    np.testing.assert_array_equal(m.log1p(pairs), m.log1p(pairs.ravel()).reshape(-1, 2))

    np.save(tmp_path / "values.npy", values)
    digests = set()
    for env in ({}, NUMPY_BASELINE_ONLY):
        digests.add(_output_of(LOG1P_IN_A_PROCESS, tmp_path / "values.npy", env=env).strip())
    assert digests == {hashlib.md5(ours.tobytes()).hexdigest()}


def test_preconditioned_cg_solves_and_reports_non_convergence() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(60, 40))
    system = a.T @ a + 0.1 * np.eye(40)  # symmetric positive definite, badly scaled below
    system[:, 0] *= 100.0
    system[0, :] *= 100.0
    b = rng.normal(size=40)
    inverse_diagonal = 1.0 / system.diagonal()
    x, converged = m.preconditioned_cg(lambda v: system @ v, b, inverse_diagonal, 1e-12, 1000)
    assert converged
    assert np.allclose(x, np.linalg.solve(system, b), rtol=1e-8, atol=1e-10)
    _, converged = m.preconditioned_cg(lambda v: system @ v, b, inverse_diagonal, 1e-12, 3)
    assert not converged
    zero, converged = m.preconditioned_cg(lambda v: system @ v, 0 * b, inverse_diagonal, 1e-12, 5)
    assert converged and not zero.any()


# An XGBoost fit in a fresh process, scikit-learn imported first ("with") or not.
XGB_FIT_IN_A_PROCESS = """
import hashlib, sys
from pathlib import Path
if sys.argv[3] == "with":
    import sklearn
from stages import model as m
from stages.common import parse_section
from tests.conftest import PROJECT_PARAMS, encoded_months
m.import_xgboost()
loaded = {name: name in sys.modules for name in ("sklearn", "pandas")}
encoders, (train,) = encoded_months(Path(sys.argv[1]), "2025-01")
raw = PROJECT_PARAMS["model"] | {"type": "xgboost"}
params = parse_section("model", raw | {"xgboost": raw["xgboost"] | {"n_rounds": 20}})
path = Path(sys.argv[2]) / f"{sys.argv[3]}.json"
m.save(m.fit(train, encoders, params, seed=42, threads=2), path)
import sklearn.base  # importable after xgboost, whether it was hidden or not
print(loaded["sklearn"], loaded["pandas"], hashlib.md5(path.read_bytes()).hexdigest())
"""


def test_xgboost_loads_without_scikit_learn_and_fits_the_same_trees(
    small_tlc: Path, tmp_path: Path
):
    """import_xgboost keeps scikit-learn (and pandas with it) out of a process that has not
    imported it: 2 s of every XGBoost process. The model file is the same bytes as with it."""
    answers = {}
    for case in ("with", "without"):
        answers[case] = _output_of(XGB_FIT_IN_A_PROCESS, small_tlc, tmp_path, case).split()
    assert answers["with"][0] == "True"
    assert answers["without"][:2] == ["False", "False"]
    assert answers["with"][2] == answers["without"][2]
