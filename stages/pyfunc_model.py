"""MLflow pyfunc over the pipeline's own JSON model files (MLflow "models from code").

MLflow runs this file to load the model: nothing is unpickled. The artifacts are the exact
bytes of models/model.json and data/features/encoders.json, so their md5 match dvc.lock.
Input: a DataFrame with the columns of data/features/<split>.parquet.
"""

import warnings

import mlflow
from mlflow.pyfunc import PythonModel

# The input is the feature table (a DataFrame); MLflow's type-hint validation does not apply.
warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method")


class TripDurationModel(PythonModel):
    def load_context(self, context):
        from stages import model as models
        from stages.common import read_json

        self.model = models.load(context.artifacts["model"])
        self.encoders = read_json(context.artifacts["encoders"])

    def predict(self, context, model_input, params=None):
        from stages import model as models

        return models.predict(self.model, model_input, self.encoders, threads=1)


mlflow.models.set_model(TripDurationModel())
