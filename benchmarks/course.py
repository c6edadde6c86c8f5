"""The baseline: the course's duration-prediction script, as users would otherwise run it.

Written as the MLOps Zoomcamp notebook has it (`read_dataframe`, the `PU_DO` string feature,
`DictVectorizer` over `to_dict(orient="records")`, `Lasso(alpha=0.1)`, XGBoost with the
course's tuned params and early stopping on the validation month), per-row `apply` included:
the point is to measure it, not to improve it. One change lets it run with today's libraries:
DictVectorizer now emits int64 sparse indices, which Lasso refuses, so they are cast to int32.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import sparse

CATEGORICAL = ["PU_DO"]
NUMERICAL = ["trip_distance"]
LASSO_ALPHA = 0.1
# The course's hyperopt result (MLOps Zoomcamp, 02-experiment-tracking / 03-orchestration).
XGB_PARAMS = {
    "learning_rate": 0.09585355369315604,
    "max_depth": 30,
    "min_child_weight": 1.060597050922164,
    "objective": "reg:linear",
    "reg_alpha": 0.018060244040060163,
    "reg_lambda": 0.011658731377413597,
    "seed": 42,
}
XGB_EARLY_STOPPING_ROUNDS = 50
# The notebook trains up to 1000 rounds; the course's orchestration script caps it at 30.
XGB_NOTEBOOK_ROUNDS = 1000


def read_dataframe(filename):
    df = pd.read_parquet(filename)

    df["duration"] = df.lpep_dropoff_datetime - df.lpep_pickup_datetime
    df.duration = df.duration.apply(lambda td: td.total_seconds() / 60)

    df = df[(df.duration >= 1) & (df.duration <= 60)]

    categorical = ["PULocationID", "DOLocationID"]
    df[categorical] = df[categorical].astype(str)

    return df


def add_features(df):
    df["PU_DO"] = df["PULocationID"] + "_" + df["DOLocationID"]
    return df


def vectorize(df, dv=None):
    from sklearn.feature_extraction import DictVectorizer

    dicts = df[CATEGORICAL + NUMERICAL].to_dict(orient="records")
    if dv is None:
        dv = DictVectorizer()
        return dv.fit_transform(dicts), dv
    return dv.transform(dicts), dv


def _int32_indices(X: sparse.csr_matrix) -> sparse.csr_matrix:
    X.indices = X.indices.astype(np.int32)
    X.indptr = X.indptr.astype(np.int32)
    return X


def train_lasso(X, y):
    from sklearn.linear_model import Lasso

    lr = Lasso(alpha=LASSO_ALPHA)
    lr.fit(_int32_indices(X), y)
    return lr


def predict_lasso(lr, X) -> np.ndarray:
    return lr.predict(_int32_indices(X))


def train_xgboost(X_train, y_train, X_val, y_val, num_boost_round=XGB_NOTEBOOK_ROUNDS):
    import xgboost as xgb

    train = xgb.DMatrix(X_train, label=y_train)
    valid = xgb.DMatrix(X_val, label=y_val)
    return xgb.train(
        params=XGB_PARAMS,
        dtrain=train,
        num_boost_round=num_boost_round,
        evals=[(valid, "validation")],
        early_stopping_rounds=XGB_EARLY_STOPPING_ROUNDS,
        verbose_eval=False,
    )


def predict_xgboost(booster, X) -> np.ndarray:
    import xgboost as xgb

    return booster.predict(xgb.DMatrix(X), iteration_range=(0, booster.best_iteration + 1))
