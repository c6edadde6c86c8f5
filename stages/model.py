"""The models: design matrices from feature tables, fitting, and safe (pickle-free) storage.

A linear model is stored as plain JSON of its coefficients and the layout of its design
matrix; an XGBoost model in XGBoost's own JSON format. Both load without executing code.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # imported where a fit needs it: scoring (evaluate, serving) never does
    from scipy import sparse

from stages.common import CHUNK_ROWS, BadInputError, ModelParams, XGBoostParams, atomic_path
from stages.encoding import TARGET, Table, encode, n_rows

LINEAR_TYPES = ("lasso", "ridge")
# Conjugate gradients on X'X: relative residual at which ridge counts as solved.
RIDGE_RTOL, RIDGE_MAX_ITER = 1e-10, 20_000
LASSO_TOL = 1e-4  # sklearn's default
log = logging.getLogger("stages.model")
# Categorical blocks of the linear model's one-hot design, and the numeric columns after them.
NUMERIC_COLUMNS = ("trip_distance", "log_trip_distance")
XGB_COLUMNS = (
    "pickup_zone_code",
    "dropoff_zone_code",
    "pickup_borough_code",
    "dropoff_borough_code",
    "hour",
    "weekday",
    "trip_distance",
)
XGB_TYPES = ("c", "c", "c", "c", "q", "q", "q")


def linear_blocks(encoders: dict) -> dict[str, int]:
    """Each one-hot block and its width (code 0, unseen in training, has its own column)."""
    n_zones = len(encoders["zones"]) + 1
    return {
        "pair_code": len(encoders["pairs"]) + 1,
        "pickup_zone_code": n_zones,
        "dropoff_zone_code": n_zones,
        "hour_weekday": 24 * 7,
    }


@dataclass(frozen=True)
class Design:
    """The linear model's design matrix slot by slot, one slot per one-hot block or numeric
    column: every trip has exactly one entry in each slot (linear_design's CSR matrix).
    """

    columns: np.ndarray  # (slots, trips) int64: the column of each trip's entry
    values: np.ndarray  # (slots, trips) float64: the value there
    starts: np.ndarray  # (slots,) the slot's first column
    widths: np.ndarray  # (slots,) the slot's number of columns
    one_hot: tuple[bool, ...]

    @property
    def shape(self) -> tuple[int, int]:
        return self.columns.shape[1], int(self.starts[-1] + self.widths[-1])


def _block_layout(encoders: dict) -> tuple[list[int], np.ndarray]:
    """The one-hot blocks' widths and first columns; starts[-1] is the first numeric column."""
    widths = list(linear_blocks(encoders).values())
    return widths, np.concatenate([[0], np.cumsum(widths)])


# The feature columns the linear model reads.
LINEAR_COLUMNS = ("pair_code", "pickup_zone_code", "dropoff_zone_code", "weekday", "hour")


def _rows(features: Table, lo: int, hi: int) -> dict[str, np.ndarray]:
    """The linear model's columns of trips lo..hi (views, not copies)."""
    return {name: np.asarray(features[name])[lo:hi] for name in (*LINEAR_COLUMNS, "trip_distance")}


def _block_codes(features: Table) -> list[np.ndarray]:
    """Each one-hot block's code per trip (linear_blocks' order)."""

    def codes(name: str) -> np.ndarray:
        return np.asarray(features[name], dtype=np.int64)

    return [
        codes("pair_code"),
        codes("pickup_zone_code"),
        codes("dropoff_zone_code"),
        codes("weekday") * 24 + np.asarray(features["hour"]),
    ]


def _numeric_columns(features: Table) -> list[np.ndarray]:
    """NUMERIC_COLUMNS per trip: the distance and its log."""
    distance = np.asarray(features["trip_distance"], dtype=np.float64)
    return [distance, log1p(distance)]


LOG1P_BLOCK = 1 << 14
# fdlibm's log (e_log.c): ln 2 in two parts, and the coefficients of its polynomial in s^2.
_LN2_HI, _LN2_LO = 6.93147180369123816490e-01, 1.90821492927058770002e-10
_LG = (
    6.666666666666735130e-01,
    3.999999999940941908e-01,
    2.857142874366239149e-01,
    2.222219843214978396e-01,
    1.818357216161805012e-01,
    1.531383769920937332e-01,
    1.479819860511658591e-01,
)


def log1p(x: np.ndarray) -> np.ndarray:
    """log(1 + x), the same bits on every CPU: fdlibm's log algorithm in numpy's +, -, *, /.

    `np.log1p` runs a SIMD kernel chosen by the CPU: on an AVX-512 CPU numpy's own, which
    differs from the C library's in the last bit for 4.7% of values (measured on an AMD EPYC,
    numpy 2.4; with numpy's AVX-512 loops turned off it runs the C library's). The log
    distance is a column of the linear design, so the model file differed between teammates'
    CPUs. Elementwise +, -, *, / are exact IEEE operations on every CPU and frexp is exact.
    Within 1 ulp of the C library's log1p (tests/test_model.py).

    Worked in blocks of LOG1P_BLOCK values, so that its dozen temporaries stay in the CPU's
    cache: 2.85M distances took 0.15 s in one piece, 0.04 s in blocks (np.log1p: 0.003 s).
    """
    x = np.asarray(x, dtype=np.float64)
    out = np.empty(x.shape)
    flat_x, flat_out = x.reshape(-1), out.reshape(-1)
    for lo in range(0, len(flat_x), LOG1P_BLOCK):
        flat_out[lo : lo + LOG1P_BLOCK] = _log1p_block(flat_x[lo : lo + LOG1P_BLOCK])
    return out


def _log1p_block(x: np.ndarray) -> np.ndarray:
    """1 + x is rounded to u, its rounding error kept exactly (TwoSum) and added as err / u;
    log u = k ln 2 + log(1 + f) with u = 2^k (1 + f), sqrt(1/2) <= 1 + f < sqrt(2), and
    log(1 + f) = f - f^2/2 + s (f^2/2 + R(s^2)), s = f / (2 + f), as in fdlibm."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        u = 1.0 + x
        err = np.where(np.abs(x) <= 1.0, (1.0 - u) + x, (x - u) + 1.0)
        finite = np.isfinite(u) & (u > 0)
        u = np.where(finite, u, 1.0)
        mantissa, exponent = np.frexp(u)  # u = mantissa 2^exponent, mantissa in [0.5, 1)
        low = mantissa < np.sqrt(0.5)
        k = (exponent - low).astype(np.float64)
        f = np.where(low, 2.0 * mantissa, mantissa) - 1.0  # exact: 1 + f in [0.70, 1.42)
        s = f / (2.0 + f)
        z = s * s
        w = z * z
        t1 = w * (_LG[1] + w * (_LG[3] + w * _LG[5]))
        t2 = z * (_LG[0] + w * (_LG[2] + w * (_LG[4] + w * _LG[6])))
        half_f2 = 0.5 * f * f
        log_u = k * _LN2_HI - ((half_f2 - (s * (half_f2 + (t2 + t1)) + k * _LN2_LO)) - f)
        result = np.where(x == 0, x, log_u + err / u)  # log1p(-0.0) is -0.0
        if not finite.all():  # inf, -1, below -1 and nan: what every log1p returns exactly
            result[~finite] = np.log1p(x[~finite])
        return result


def design(features: Table, encoders: dict) -> Design:
    """One-hot blocks (linear_blocks), then the distance and its log."""
    n = n_rows(features)
    block_codes = _block_codes(features)
    n_blocks, n_slots = len(block_codes), len(block_codes) + len(NUMERIC_COLUMNS)
    widths = np.array([*linear_blocks(encoders).values(), *[1] * len(NUMERIC_COLUMNS)])
    starts = np.concatenate([[0], np.cumsum(widths)[:-1]])
    columns = np.empty((n_slots, n), dtype=np.int64)
    for slot, codes in enumerate(block_codes):
        np.add(codes, starts[slot], out=columns[slot], casting="unsafe")
    columns[n_blocks:] = starts[n_blocks:, None]
    values = np.ones((n_slots, n))
    values[n_blocks:] = _numeric_columns(features)
    return Design(
        columns, values, starts, widths, (True,) * n_blocks + (False,) * len(NUMERIC_COLUMNS)
    )


def linear_design(features: Table, encoders: dict) -> sparse.csr_matrix:
    """The design as a CSR matrix (int32 indices; columns increasing within every row): what
    linear_moments and linear_predict compute with, without building it; the tests hold them
    to it."""
    from scipy import sparse

    slots = design(features, encoders)
    n, n_cols = slots.shape
    per_row = len(slots.starts)
    indices = slots.columns.T.astype(np.int32).ravel()
    indptr = np.arange(0, n * per_row + 1, per_row, dtype=np.int32)
    return sparse.csr_matrix((slots.values.T.ravel(), indices, indptr), shape=(n, n_cols))


@dataclass(frozen=True)
class Moments:
    """What a linear fit needs of the trips: X'X, the column means, mean(y) and Xc'yc."""

    gram: sparse.csr_matrix
    mean_x: np.ndarray
    mean_y: float
    moment: np.ndarray
    rows: int


def linear_moments(
    features: Table, encoders: dict, y: np.ndarray, chunk_rows: int = CHUNK_ROWS
) -> Moments:
    """X'X and X'y of the linear design (`design`), accumulated chunk by chunk of trips.

    Each one-hot block pair's part of X'X is one `np.bincount` of the pair's joint code, each
    one-hot x numeric part a weighted bincount, the numeric block dot products: no design
    matrix is built. Working a chunk at a time keeps every temporary small and reused: on the
    whole table at once, a 64x fit spent more time faulting in fresh pages for its n-long
    temporaries than computing (FINDINGS, issue 13 target 4), and the cost per trip grew with
    the trips.
    """
    widths, starts = _block_layout(encoders)
    n_blocks, n_numeric = len(widths), len(NUMERIC_COLUMNS)
    n = n_rows(features)
    counts = [np.zeros(w) for w in widths]
    block_y = [np.zeros(w) for w in widths]
    pairs = {
        (a, b): np.zeros(widths[a] * widths[b])
        for a in range(n_blocks)
        for b in range(a + 1, n_blocks)
    }
    block_numeric = {(a, k): np.zeros(widths[a]) for a in range(n_blocks) for k in range(n_numeric)}
    numeric_sum, numeric_y = np.zeros(n_numeric), np.zeros(n_numeric)
    numeric_gram = np.zeros((n_numeric, n_numeric))
    y_sum = 0.0
    scratch = np.empty(min(n, chunk_rows))
    for lo in range(0, n, chunk_rows):
        part, part_y = _rows(features, lo, lo + chunk_rows), y[lo : lo + chunk_rows]
        codes = _block_codes(part)
        numeric = _numeric_columns(part)
        for a, code in enumerate(codes):
            counts[a] += np.bincount(code, minlength=widths[a])
            block_y[a] += np.bincount(code, weights=part_y, minlength=widths[a])
            for b in range(a + 1, n_blocks):
                joint = code * widths[b] + codes[b]
                pairs[a, b] += np.bincount(joint, minlength=widths[a] * widths[b])
            for k, values in enumerate(numeric):
                block_numeric[a, k] += np.bincount(code, weights=values, minlength=widths[a])
        for k, values in enumerate(numeric):
            numeric_sum[k] += values.sum()
            numeric_y[k] += dot(values, part_y, scratch)
            for j in range(k, n_numeric):  # symmetric: a[i] * b[i] == b[i] * a[i] exactly
                numeric_gram[k, j] += dot(values, numeric[j], scratch)
                numeric_gram[j, k] = numeric_gram[k, j]
        y_sum += float(part_y.sum())

    rows, cols, data = [], [], []

    def add(row: np.ndarray, col: np.ndarray, values: np.ndarray, symmetric: bool) -> None:
        rows.extend([row, col] if symmetric else [row])
        cols.extend([col, row] if symmetric else [col])
        data.extend([values, values] if symmetric else [values])

    for a in range(n_blocks):
        nz = np.flatnonzero(counts[a])
        add(nz + starts[a], nz + starts[a], counts[a][nz], symmetric=False)
        for b in range(a + 1, n_blocks):
            nz = np.flatnonzero(pairs[a, b])
            row, col = nz // widths[b] + starts[a], nz % widths[b] + starts[b]
            add(row, col, pairs[a, b][nz], symmetric=True)
        for k in range(n_numeric):
            nz = np.flatnonzero(block_numeric[a, k])
            column = np.full(len(nz), starts[n_blocks] + k)
            add(nz + starts[a], column, block_numeric[a, k][nz], symmetric=True)
    numeric_index = np.arange(n_numeric) + starts[n_blocks]
    row, col = np.meshgrid(numeric_index, numeric_index, indexing="ij")
    add(row.ravel(), col.ravel(), numeric_gram.ravel(), symmetric=False)
    n_cols = int(starts[-1]) + n_numeric
    entries = (np.concatenate(data), (np.concatenate(rows), np.concatenate(cols)))
    from scipy import sparse

    gram = sparse.coo_matrix(entries, shape=(n_cols, n_cols)).tocsr()
    mean_x = np.concatenate([*counts, numeric_sum]) / n
    mean_y = y_sum / n
    xty = np.concatenate([*block_y, numeric_y])
    return Moments(gram, mean_x, mean_y, xty - n * mean_x * mean_y, n)


def dot(a: np.ndarray, b: np.ndarray, scratch: np.ndarray | None = None) -> float:
    """The sum of a * b in one order on every CPU: numpy's pairwise sum of the products.

    `a @ b` is BLAS's ddot, whose kernel OpenBLAS picks by CPU (Haswell, SkylakeX, Zen,
    Sandybridge, ...), each adding in its own order: the fitted coefficients, and so the model
    file, differed in their last bits from one teammate's CPU to another's, the metrics not
    (benchmarks/results/FINDINGS.md). Elementwise products are exact IEEE operations on every
    CPU, and numpy's pairwise summation has a fixed order whichever SIMD loop runs it.
    `scratch` (at least len(a) float64s) holds the products instead of a new array.
    """
    products = np.multiply(a, b, out=None if scratch is None else scratch[: len(a)])
    return float(np.add.reduce(products))


def preconditioned_cg(
    matvec: Callable[[np.ndarray], np.ndarray],
    b: np.ndarray,
    inverse_diagonal: np.ndarray,
    rtol: float,
    maxiter: int,
) -> tuple[np.ndarray, bool]:
    """Conjugate gradients from zero with a diagonal preconditioner: scipy's `cg`, step for
    step, with its dot products and norms taken by `dot`, so the solution does not depend on
    the CPU's BLAS. Returns the solution and whether |r| fell below rtol |b|."""
    x = np.zeros_like(b)
    b_norm = np.sqrt(dot(b, b))
    if b_norm == 0:
        return x, True
    r = b.copy()
    p: np.ndarray | None = None
    rho_previous = 0.0
    for _ in range(maxiter):
        if np.sqrt(dot(r, r)) < rtol * b_norm:
            return x, True
        z = inverse_diagonal * r
        rho = dot(r, z)
        p = z if p is None else z + (rho / rho_previous) * p
        q = matvec(p)
        alpha = rho / dot(p, q)
        x += alpha * p
        r -= alpha * q
        rho_previous = rho
    return x, False


def ridge_solve(moments: Moments, alpha: float) -> tuple[np.ndarray, float]:
    """Exact ridge with an unpenalised intercept, from the normal equations.

    X'X is formed sparse (linear_moments) and solved by conjugate gradients preconditioned with
    its diagonal. A dense solve is cubic in the columns, and the pair vocabulary grows with the
    trips (4,173 columns at 16x January: 1.7 s dense; here 0.07 s for X'X, 0.1 s to solve).
    The preconditioner evens out one-hot columns whose counts span four orders of magnitude
    (what makes sklearn's unpreconditioned sparse_cg slow). With alpha = 0 the one-hot blocks
    are collinear; the system stays consistent and CG from zero reaches an exact solution.
    """
    n, gram, mean_x, mean_y = moments.rows, moments.gram, moments.mean_x, moments.mean_y
    # Centred Gram matrix: the sparse part minus a rank-one term.
    diagonal = gram.diagonal() - n * mean_x**2 + alpha
    inverse_diagonal = np.divide(1.0, diagonal, out=np.ones_like(diagonal), where=diagonal > 0)
    coef, converged = preconditioned_cg(
        lambda v: gram @ v - n * dot(mean_x, v) * mean_x + alpha * v,
        moments.moment,
        inverse_diagonal,
        rtol=RIDGE_RTOL,
        maxiter=RIDGE_MAX_ITER,
    )
    if not converged:
        raise BadInputError(f"ridge did not converge in {RIDGE_MAX_ITER} iterations (model.alpha)")
    return coef, mean_y - dot(mean_x, coef)


def lasso_solve(
    moments: Moments, y: np.ndarray, alpha: float, max_iter: int
) -> tuple[np.ndarray, float]:
    """sklearn's Lasso (|y - Xw - b|^2 / 2n + alpha |w|_1), by coordinate descent on X'X.

    sklearn's sparse solver walks the n-long residual in every epoch, a scattered access that
    leaves the cache as trips grow (236 ms an epoch at 64x January, 9.5 s a fit). On the
    centred Gram matrix an epoch costs O(columns^2) whatever the number of trips: 1.8 s at
    64x. Same cyclic order and stopping rule (largest step, then duality gap, tol 1e-4 of
    y's centred sum of squares), so the same epochs and coefficients (predictions to 1e-8).
    The Python loop runs over columns, not trips: an epoch of 4,174 columns takes ~4 ms.
    """
    n, mean_x, mean_y = moments.rows, moments.mean_x, moments.mean_y
    gram = moments.gram.toarray() / n - np.outer(mean_x, mean_x)
    moment = moments.moment / n
    centred_y2 = float(np.mean((y - mean_y) ** 2))
    diagonal = gram.diagonal().tolist()
    coef = np.zeros(len(moment))
    gram_coef = np.zeros(len(moment))  # gram @ coef, kept up to date
    columns = [j for j, d in enumerate(diagonal) if d > 0]
    for _ in range(max_iter):
        largest = largest_step = 0.0
        for j in columns:
            old = coef[j]
            rho = moment[j] - gram_coef[j] + diagonal[j] * old
            shrunk = rho - alpha if rho > alpha else rho + alpha if rho < -alpha else 0.0
            new = shrunk / diagonal[j]
            if new != old:
                gram_coef += gram[j] * (new - old)
                coef[j] = new
                largest_step = max(largest_step, abs(new - old))
            largest = max(largest, abs(new))
        if largest == 0 or largest_step / largest < LASSO_TOL:
            residual2 = centred_y2 - 2 * dot(moment, coef) + dot(coef, gram_coef)
            dual_norm = float(np.max(np.abs(moment - gram_coef)))
            scale = alpha / dual_norm if dual_norm > alpha else 1.0
            gap = (
                0.5 * residual2 * (1 + scale**2)
                + alpha * np.abs(coef).sum()
                - scale * (centred_y2 - dot(moment, coef))
            )
            if gap < LASSO_TOL * centred_y2:
                break
    else:
        log.warning("lasso did not converge in %d epochs (model.max_iter)", max_iter)
    return coef, mean_y - dot(mean_x, coef)


def import_xgboost() -> Any:
    """xgboost, its OpenMP threads told to sleep at a barrier instead of spinning
    (OMP_WAIT_POLICY=PASSIVE, unless the environment already sets it), and without
    scikit-learn.

    The policy is read once, when xgboost's OpenMP runtime loads, so every project path to
    xgboost comes through here. Spinning threads are what made a fit on a busy 2-core machine
    crawl (FINDINGS: 100 rounds at 16x 239-401 ms a round spinning, 107-146 ms sleeping,
    under the same load); the trees are the same either way.

    xgboost imports scikit-learn, when it is installed, for its scikit-learn estimators
    (XGBRegressor, ...). The project trains with `xgboost.train` and never uses them, and
    scikit-learn's import (scipy's modules and pandas with it) was most of `import xgboost`:
    2.7 s against 0.6 s on this machine (FINDINGS). So scikit-learn is hidden while xgboost
    loads, unless the process imported it already; xgboost then defines its estimators
    without scikit-learn's base classes, and `import sklearn` works as before afterwards.
    The hiding is process-wide for the moment of the import: a thread importing scikit-learn
    in that moment would get ImportError. No project thread does (MLflow's client, opened in a
    thread beside train and evaluate, does not import it).
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    hide = "sklearn" not in sys.modules and "xgboost" not in sys.modules
    if hide:
        # A None entry makes `import sklearn` raise ImportError; xgboost catches it.
        sys.modules["sklearn"] = None  # type: ignore[assignment]
    try:
        import xgboost
    finally:
        if hide and sys.modules.get("sklearn", False) is None:
            del sys.modules["sklearn"]
    return xgboost


def xgb_matrix(features: Table, order: np.ndarray | None = None) -> np.ndarray:
    """XGBoost's float32 matrix, its rows in `order` (all of them in file order by default).

    Each narrow column (int8/int16 codes) is gathered on its own and cast into its column of
    the result: at 2.85M trips 0.2 s, where taking the rows of the finished float32 matrix
    cost 0.6-1.2 s. The values are the same either way, so are the trees.
    """
    n = n_rows(features) if order is None else len(order)
    matrix = np.empty((n, len(XGB_COLUMNS)), dtype=np.float32)
    for j, name in enumerate(XGB_COLUMNS):
        column = np.asarray(features[name])
        matrix[:, j] = column if order is None else column[order]
    return matrix


def xgb_row_order(features: Table) -> np.ndarray:
    """Training rows by pickup zone, dropoff zone, distance (stable, so deterministic).

    The rows of one tree node then lie close together in XGBoost's binned matrix, and building
    its histograms streams memory instead of gathering from all of it: at 2.85M trips a round
    takes 135 ms instead of 318 ms, and the cost per row stays flat from 178k rows up
    (benchmarks/results/FINDINGS.md).
    """
    return np.lexsort(
        (
            np.asarray(features["trip_distance"]),
            np.asarray(features["dropoff_zone_code"]),
            np.asarray(features["pickup_zone_code"]),
        )
    )


def booster_params(xp: XGBoostParams, seed: int, threads: int) -> dict[str, Any]:
    """XGBoost's training params from model.xgboost (one place for the single-process and
    the Dask fit, stages.cluster)."""
    return {
        "objective": "reg:squarederror",
        "tree_method": "hist",
        "learning_rate": xp.learning_rate,
        "max_depth": xp.max_depth,
        "min_child_weight": xp.min_child_weight,
        "subsample": xp.subsample,
        "colsample_bytree": xp.colsample_bytree,
        "max_cat_to_onehot": xp.max_cat_to_onehot,
        "reg_lambda": xp.reg_lambda,
        "gamma": xp.gamma,
        "seed": seed,
        "nthread": threads,
    }


def fit(
    features: Table,
    encoders: dict,
    params: ModelParams,
    seed: int,
    threads: int,
    *,
    watch: Table | None = None,
    callbacks: Sequence[Any] = (),
) -> dict[str, Any]:
    """Fit the model params.type names; return it as a JSON-able document.

    XGBoost only: with `watch` (a feature table), its RMSE on those trips is evaluated after
    every round for `callbacks` (xgboost TrainingCallbacks: the tuner's pruning). Watching
    does not change the trees; train never passes it.
    """
    y = np.asarray(features[TARGET], dtype=np.float64)
    if params.type in LINEAR_TYPES:
        # No BLAS thread limit: the linear fit calls no BLAS (`dot`), so `threads` is XGBoost's.
        if params.type == "lasso" and params.alpha == 0:
            raise BadInputError("model.alpha must be > 0 for lasso (use ridge for no penalty)")
        moments = linear_moments(features, encoders, y)
        if params.type == "ridge":
            coef, intercept = ridge_solve(moments, params.alpha)
        else:
            coef, intercept = lasso_solve(moments, y, params.alpha, params.max_iter)
        return {
            "type": params.type,
            "alpha": params.alpha,
            "blocks": linear_blocks(encoders),
            "numeric": list(NUMERIC_COLUMNS),
            "intercept": float(intercept),
            "coef": [float(c) for c in coef],
        }

    xgb = import_xgboost()

    xp = params.xgboost
    order = xgb_row_order(features)
    dtrain = xgb.DMatrix(
        xgb_matrix(features, order),
        label=y[order],
        feature_names=list(XGB_COLUMNS),
        feature_types=list(XGB_TYPES),
        enable_categorical=True,
        nthread=threads,
    )
    evals = []
    if watch is not None:
        dwatch = xgb.DMatrix(
            xgb_matrix(watch),
            label=np.asarray(watch[TARGET], dtype=np.float64),
            feature_names=list(XGB_COLUMNS),
            feature_types=list(XGB_TYPES),
            enable_categorical=True,
            nthread=threads,
        )
        evals = [(dwatch, "watch")]
    booster = xgb.train(
        booster_params(xp, seed, threads) | ({"eval_metric": "rmse"} if evals else {}),
        dtrain,
        num_boost_round=xp.n_rounds,
        evals=evals,
        callbacks=list(callbacks) or None,
        verbose_eval=False,
    )
    return {"type": "xgboost", "raw": bytes(booster.save_raw("json"))}


def linear_predict(
    model: dict[str, Any], features: Table, encoders: dict, chunk_rows: int = CHUNK_ROWS
) -> np.ndarray:
    """X @ coef + intercept, without X: each trip's one-hot coefficients gathered by code,
    plus its numeric terms, a chunk of trips at a time.

    The terms are added in the design's column order, as scipy's CSR product adds them (a
    one-hot entry is 1.0 times its coefficient), so the predictions are those of
    `linear_design(...) @ coef + intercept` bit for bit; the CSR matrix of 11.4M trips took
    1.9 GB.
    """
    coef = np.asarray(model["coef"], dtype=np.float64)
    _, starts = _block_layout(encoders)
    numeric_coef = coef[starts[-1] :]
    n = n_rows(features)
    predicted = np.empty(n)
    for lo in range(0, n, chunk_rows):
        part = _rows(features, lo, lo + chunk_rows)
        out = predicted[lo : lo + chunk_rows]
        codes = _block_codes(part)
        np.take(coef, codes[0] + starts[0], out=out)
        for block in range(1, len(codes)):
            out += coef[codes[block] + starts[block]]
        for values, weight in zip(_numeric_columns(part), numeric_coef, strict=True):
            out += values * weight
        out += model["intercept"]
    return predicted


def save(model: dict[str, Any], path: Path) -> None:
    """Linear models as our JSON; XGBoost as its native JSON, loadable by xgboost alone."""
    with atomic_path(path) as tmp:
        if model["type"] == "xgboost":
            tmp.write_bytes(model["raw"])
        else:
            tmp.write_text(json.dumps(model, separators=(",", ":")))


def load(path: Path) -> dict[str, Any]:
    try:
        raw = Path(path).read_bytes()
        document = json.loads(raw)
    except (OSError, json.JSONDecodeError) as exc:
        raise BadInputError(f"{path}: not a model file written by train: {exc}") from None
    if "learner" in document:
        return {"type": "xgboost", "raw": raw}
    if document.get("type") not in LINEAR_TYPES:
        raise BadInputError(f"{path}: unknown model type {document.get('type')!r}")
    return document


def predict(model: dict[str, Any], features: Table, encoders: dict, threads: int) -> np.ndarray:
    if model["type"] in LINEAR_TYPES:
        if model["blocks"] != linear_blocks(encoders):
            raise BadInputError("model and encoders disagree on the one-hot layout: retrain")
        return linear_predict(model, features, encoders)

    xgb = import_xgboost()

    booster = xgb.Booster(params={"nthread": threads})
    booster.load_model(bytearray(model["raw"]))
    dmatrix = xgb.DMatrix(
        xgb_matrix(features),
        feature_names=list(XGB_COLUMNS),
        feature_types=list(XGB_TYPES),
        enable_categorical=True,
        nthread=threads,
    )
    return booster.predict(dmatrix).astype(np.float64)


def predict_trips(model: dict[str, Any], encoders: dict, trips: Table, threads: int) -> np.ndarray:
    """Minutes for cleaned trips (stages.request.TRIP_COLUMNS), through the features stage's
    own encoding: how a registered model scores raw trips."""
    return predict(model, encode(trips, encoders), encoders, threads)
