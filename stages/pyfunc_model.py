"""MLflow pyfunc over the pipeline's own JSON model files (MLflow "models from code").

MLflow runs this file to load the model: nothing is unpickled. The artifacts are the exact
bytes of models/model.json and data/features/encoders.json, so their md5 match dvc.lock.
Input: a DataFrame with the columns of data/features/<split>.parquet. The `pd.DataFrame`
type hint tells MLflow the input is a table it should pass through as it is.
"""

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel


class TripDurationModel(PythonModel):
    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        from stages import model as models
        from stages.common import read_json

        self.model = models.load(context.artifacts["model"])
        self.encoders = read_json(context.artifacts["encoders"])

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext,
        model_input: pd.DataFrame,
        params: dict | None = None,
    ) -> np.ndarray:
        from stages import model as models

        return models.predict(self.model, model_input, self.encoders, threads=1)


mlflow.models.set_model(TripDurationModel())
