"""MLflow pyfunc over the pipeline's own JSON model files (MLflow "models from code").

MLflow runs this file to load the model: nothing is unpickled. The artifacts are the exact
bytes of models/model.json and data/features/encoders.json, so their md5 match dvc.lock.
Input: raw TLC trips (stages.request: the signature MLflow checks requests against, then the
column checks), encoded by the features stage's own code (stages.model.predict_trips). A
request the model cannot take raises an MlflowException with INVALID_PARAMETER_VALUE:
`mlflow models serve` answers it with a 400 that names the column.
"""

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
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
        from stages.request import RequestError, trips_from_request

        try:
            trips = trips_from_request(model_input, self.encoders)
        except RequestError as exc:
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None
        return models.predict_trips(self.model, self.encoders, trips, threads=1)


mlflow.models.set_model(TripDurationModel())
