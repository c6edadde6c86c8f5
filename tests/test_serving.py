"""The registered model as its consumers use it: loaded from outside the project, and served
over HTTP by the real `mlflow models serve` (benchmarks.serving starts it), on real TLC trips."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import requests
import yaml

from benchmarks.serving import outside_environment, raw_trips, records, served_model
from tests.conftest import ROOT, SHARED_TLC, kept_rows, run

VALIDATION_MONTH = "2025-02"
VALIDATION_FILE = f"green_tripdata_{VALIDATION_MONTH}.parquet"
TOLERANCE = 1e-9

# Run by the project's interpreter from a scratch folder, with no PYTHONPATH: a consumer who
# has the tracking URI and the model's name, and none of the project's code.
CONSUMER = """
import json
import os
import sys
from pathlib import Path

model_uri, request_file, out_file, *project_roots = sys.argv[1:]
roots = {Path(p).resolve() for p in project_roots}
on_path = [p for p in sys.path if Path(p or os.getcwd()).resolve() in roots]
assert not on_path, f"the project is on sys.path: {on_path}"
try:
    import stages
except ImportError:
    pass
else:
    raise SystemExit(f"import stages found {stages.__file__} before the model was loaded")

import mlflow
import pandas as pd
import pyarrow.parquet as pq

model = mlflow.pyfunc.load_model(model_uri)
signature = mlflow.models.get_model_info(model_uri).signature
trips = pq.read_table(request_file).to_pandas()
predicted = model.predict(trips)
pd.DataFrame({"predicted": predicted}).to_parquet(out_file)
print(json.dumps({
    "inputs": signature.inputs.input_names(),
    "required": [c.name for c in signature.inputs.inputs if c.required],
    "columns": list(trips.columns),
    "stages": list(sys.modules["stages"].__path__),
}))
"""


def model_uri(repo: Path) -> str:
    """The champion: what a consumer is told to use (the built project's only version)."""
    from registry.champion import CHAMPION

    params = yaml.safe_load((repo / "params.yaml").read_text())
    return f"models:/{params['model']['registered_name']}@{CHAMPION}"


def load_in_process(uri: str) -> Any:
    """The registered model loaded in this process, from the built project's store."""
    import mlflow

    store = os.environ["MLFLOW_TRACKING_URI"]  # the `built` fixture's
    mlflow.set_tracking_uri(store)
    mlflow.set_registry_uri(store)
    return mlflow.pyfunc.load_model(uri)


def max_distance(repo: Path) -> float:
    encoders = json.loads((repo / "data" / "features" / "encoders.json").read_text())
    return float(encoders["max_distance_miles"])


@pytest.mark.slow
def test_a_consumer_outside_the_project_scores_raw_trips_as_evaluate_did(
    built: Path, small_tlc: Path, tmp_path: Path
):
    raw = pq.read_table(small_tlc / VALIDATION_FILE)
    request = tmp_path / "request.parquet"
    pq.write_table(raw.filter(kept_rows(small_tlc, VALIDATION_MONTH)), request)
    script, out = tmp_path / "consumer.py", tmp_path / "predicted.parquet"
    script.write_text(CONSUMER)
    uri = model_uri(built)
    env = outside_environment(os.environ["MLFLOW_TRACKING_URI"])
    assert str(ROOT) not in env.get("PYTHONPATH", "")

    proc = run(
        [sys.executable, str(script), uri, str(request), str(out), str(ROOT), str(built)],
        tmp_path,
        env,
        timeout=180,
    )
    said = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"PULocationID", "DOLocationID", "trip_distance"} <= set(said["required"])
    assert {"lpep_pickup_datetime", "tpep_pickup_datetime", "pickup_datetime"} <= set(
        said["inputs"]
    )
    assert said["columns"] == raw.schema.names  # every raw column, as the file has them
    for path in map(Path, said["stages"]):  # the model ran on the code it ships (code_paths)
        assert path.parts[-2:] == ("code", "stages"), path
        assert path.resolve() not in {ROOT / "stages", built / "stages"}, path

    predicted = pd.read_parquet(out)["predicted"].to_numpy()
    evaluated = pd.read_parquet(built / "data" / "predictions" / "validation.parquet")
    assert len(predicted) == len(evaluated) > 2000
    np.testing.assert_allclose(predicted, evaluated["predicted"].to_numpy(), atol=TOLERANCE, rtol=0)


def invocations(url: str, body: object = None, data: str | None = None) -> requests.Response:

    if data is not None:
        return requests.post(
            f"{url}/invocations",
            data=data,
            headers={"Content-Type": "application/json"},
            timeout=60,
        )
    return requests.post(f"{url}/invocations", json=body, timeout=120)


@pytest.mark.slow
def test_served_over_http_answers_as_the_model_in_process(built: Path, tmp_path: Path):
    trips = raw_trips(SHARED_TLC / VALIDATION_FILE, 10_000, max_distance(built))
    assert len(trips) == 10_000
    uri = model_uri(built)
    expected = np.asarray(load_in_process(uri).predict(trips), dtype=np.float64)

    with served_model(uri, os.environ["MLFLOW_TRACKING_URI"], tmp_path / "serve") as server:
        for batch in (trips.head(1), trips):
            answer = invocations(server.url, {"dataframe_records": records(batch)})
            assert answer.status_code == 200, answer.text[-2000:]
            served = np.asarray(answer.json()["predictions"], dtype=np.float64)
            assert served.shape == (len(batch),)
            np.testing.assert_allclose(served, expected[: len(batch)], atol=TOLERANCE, rtol=0)


@pytest.mark.slow
def test_served_bad_requests_are_400_naming_the_column(built: Path, tmp_path: Path):
    trips = raw_trips(SHARED_TLC / VALIDATION_FILE, 3, max_distance(built))
    good = records(trips)
    bad = {
        "missing DOLocationID": (
            [{k: v for k, v in r.items() if k != "DOLocationID"} for r in good],
            r"missing inputs \['DOLocationID'\]",
        ),
        "negative trip_distance": (
            [{**r, "trip_distance": -1.5} for r in good],
            r"column 'trip_distance': -1\.5 miles at row 0",
        ),
        "null PULocationID": (
            [good[0], {**good[1], "PULocationID": None}, good[2]],
            r"column PULocationID",
        ),
        "a string for trip_distance": (
            [{**r, "trip_distance": "far"} for r in good],
            r"column trip_distance",
        ),
    }
    uri = model_uri(built)
    with served_model(uri, os.environ["MLFLOW_TRACKING_URI"], tmp_path / "serve") as server:
        unseen = invocations(server.url, {"dataframe_records": [{**good[0], "PULocationID": 0}]})
        assert unseen.status_code == 200, unseen.text  # the documented unseen-zone fallback
        wrong = []
        for name, (rows, named) in bad.items():
            answer = invocations(server.url, {"dataframe_records": rows})
            message = answer.json().get("message", "") if answer.text.startswith("{") else ""
            if answer.status_code != 400 or not re.search(named, message):
                wrong.append(f"{name}: {answer.status_code} {answer.text[-600:]}")
        answer = invocations(server.url, data='{"dataframe_records": [{"PULocationID": 7')
        if answer.status_code != 400 or "valid JSON" not in answer.json().get("message", ""):
            wrong.append(f"not JSON: {answer.status_code} {answer.text[-600:]}")
    assert not wrong, "\n".join(wrong)
