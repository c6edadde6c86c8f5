"""Serving: the registered model behind `mlflow models serve`, measured over real HTTP.

    python -m benchmarks.serving                      # builds a scratch project (dvc repro)
    python -m benchmarks.serving --tracking-uri sqlite:////work/main/mlflow.db \\
        --model-uri models:/nyc-taxi-trip-duration-minutes@champion

The server is the real one (`mlflow models serve --env-manager local`, uvicorn, one worker)
started outside the project: its working directory is a scratch folder and PYTHONPATH does not
name the project, so the model runs on the code it ships. Requests are raw TLC trips as the
file has them (every column, timestamps as ISO strings, JSON `dataframe_records`): single-trip
latency over sequential requests on one keep-alive connection, then the throughput of large
batches. The body is serialised once beforehand, so the client's JSON encoding is not timed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE_MINUTES = 1e-9  # served answers must equal the in-process pyfunc's
VALIDATION_FILE = "green_tripdata_2025-02.parquet"
SERVER_START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
SINGLE_REQUESTS = 200
BATCH_ROWS = 10_000
BATCH_REPEATS = 5
WARMUP_REQUESTS = 5


def registered_model_uri() -> str:
    """`models:/<model.registered_name>@champion` from the project's params.yaml."""
    from registry.champion import CHAMPION

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    return f"models:/{params['model']['registered_name']}@{CHAMPION}"


def free_port() -> int:
    """A TCP port nobody listens on now (the OS picks it: bind port 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def outside_environment(tracking_uri: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a process outside the project: no PYTHONPATH, the venv's scripts
    first on PATH (`mlflow models serve` execs `uvicorn` by name), MLflow at `tracking_uri`."""
    env = dict(os.environ if base is None else base)
    env.pop("PYTHONPATH", None)
    scripts = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([scripts, env.get("PATH", "")])
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    # mlflow.set_registry_uri (stage_runtime.record.connect) exports this to the environment: one
    # set earlier in this process for another store must not follow a consumer elsewhere.
    env.pop("MLFLOW_REGISTRY_URI", None)
    return env


def serve_command(model_uri: str, port: int) -> list[str]:
    """`mlflow models serve` on 127.0.0.1:`port` in this environment (no new virtualenv)."""
    mlflow = str(Path(sys.executable).parent / "mlflow")
    return [
        mlflow,
        "models",
        "serve",
        "-m",
        model_uri,
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "--env-manager",
        "local",
        "--no-conda",
    ]


@dataclass
class Server:
    """A running `mlflow models serve`: its address, process and log file."""

    url: str
    process: subprocess.Popen
    log: Path
    started_seconds: float

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError as exc:
            return f"(no log: {exc})"


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM the server's process group (mlflow and its uvicorn child), then SIGKILL."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=STOP_TIMEOUT)
    with contextlib.suppress(ProcessLookupError):  # a child that outlived its parent
        os.killpg(process.pid, signal.SIGKILL)


@contextlib.contextmanager
def served_model(
    model_uri: str,
    tracking_uri: str,
    cwd: Path,
    timeout: float = SERVER_START_TIMEOUT,
    env: dict[str, str] | None = None,
) -> Iterator[Server]:
    """`mlflow models serve` of `model_uri` from `cwd`, up once GET /ping answers 200; always
    stopped afterwards. RuntimeError with the server's log when it is not up within `timeout`
    seconds or exits first."""
    import requests

    cwd.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = cwd / f"mlflow-serve-{port}.log"
    started = time.perf_counter()
    with log.open("wb") as sink:
        process = subprocess.Popen(
            serve_command(model_uri, port),
            cwd=cwd,
            env=outside_environment(tracking_uri, env),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(f"http://127.0.0.1:{port}", process, log, 0.0)
    try:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{server.url}/ping", timeout=2).status_code == 200:
                    break
            if process.poll() is not None:
                raise RuntimeError(
                    f"mlflow models serve exited {process.returncode} before answering /ping:\n"
                    + server.log_tail()
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"mlflow models serve did not answer {server.url}/ping within {timeout:.0f} s:"
                    "\n" + server.log_tail()
                )
            time.sleep(0.25)
        server.started_seconds = time.perf_counter() - started
        yield server
    finally:
        _stop(process)


def raw_trips(path: Path, rows: int | None, max_distance_miles: float) -> pd.DataFrame:
    """The first `rows` trips of a real TLC file (every column, the file's own types) whose
    distance the model takes: more than 0 and at most `max_distance_miles`."""
    trips = pd.read_parquet(path)
    distance = trips["trip_distance"]
    trips = trips.loc[(distance > 0) & (distance <= max_distance_miles)]
    return (trips if rows is None else trips.head(rows)).reset_index(drop=True)


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """`frame` as JSON-ready `dataframe_records`: timestamps as ISO 8601 strings, nulls as None,
    numbers as Python ints and floats (json.dumps writes floats exactly)."""
    out = frame.copy()
    for column in out.columns:
        if pd.api.types.is_datetime64_any_dtype(out[column]):
            out[column] = out[column].dt.strftime("%Y-%m-%dT%H:%M:%S.%f")
    return out.astype(object).where(frame.notna(), None).to_dict("records")


def request_body(frame: pd.DataFrame) -> bytes:
    """The /invocations body scoring `frame`'s trips."""
    return json.dumps({"dataframe_records": records(frame)}).encode()


def _percentile_ms(seconds: list[float], q: float) -> float:
    return round(float(np.percentile(seconds, q)) * 1000, 3)


def measure(
    url: str,
    single: bytes,
    batch: bytes,
    expected: np.ndarray,
    *,
    single_requests: int = SINGLE_REQUESTS,
    batch_repeats: int = BATCH_REPEATS,
    warmup: int = WARMUP_REQUESTS,
) -> dict[str, Any]:
    """Latency of `single_requests` sequential single-trip requests and the throughput of
    `batch_repeats` batch requests, after `warmup` of each, on one keep-alive session; every
    batch answer must equal `expected` (the in-process predictions) within TOLERANCE_MINUTES,
    or RuntimeError."""
    import requests

    headers = {"Content-Type": "application/json"}
    with requests.Session() as session:

        def post(body: bytes) -> tuple[float, list[float]]:
            started = time.perf_counter()
            answer = session.post(f"{url}/invocations", data=body, headers=headers, timeout=120)
            seconds = time.perf_counter() - started
            if answer.status_code != 200:
                raise RuntimeError(f"/invocations answered {answer.status_code}: {answer.text}")
            return seconds, answer.json()["predictions"]

        for _ in range(warmup):
            post(single)
        post(batch)
        latencies = [post(single)[0] for _ in range(single_requests)]
        batches, difference = [], 0.0
        for _ in range(batch_repeats):
            seconds, predictions = post(batch)
            if len(predictions) != len(expected):
                raise RuntimeError(f"{len(predictions)} predictions for {len(expected)} trips")
            difference = max(difference, float(np.max(np.abs(np.asarray(predictions) - expected))))
            if difference > TOLERANCE_MINUTES:
                raise RuntimeError(
                    f"the server's answers differ from the in-process model's by up to "
                    f"{difference:g} minutes"
                )
            batches.append(seconds)
    batch_rows = len(expected)
    rates = [batch_rows / s for s in batches]
    return {
        "single": {
            "requests": single_requests,
            "request_bytes": len(single),
            "p50_ms": _percentile_ms(latencies, 50),
            "p99_ms": _percentile_ms(latencies, 99),
            "mean_ms": round(statistics.mean(latencies) * 1000, 3),
            "min_ms": round(min(latencies) * 1000, 3),
            "max_ms": round(max(latencies) * 1000, 3),
        },
        "batch": {
            "rows": batch_rows,
            "repeats": batch_repeats,
            "request_bytes": len(batch),
            "seconds": [round(s, 4) for s in batches],
            "best_trips_per_second": round(max(rates), 1),
            "median_trips_per_second": round(statistics.median(rates), 1),
            "max_abs_difference_from_in_process": difference,
        },
    }


def pinned_model_uri(model_uri: str, tracking_uri: str) -> str:
    """`models:/name/latest` or `models:/name@alias` as the version it names now
    (`models:/name/N`), so that the server and the in-process reference load the same version
    even if another run registers a newer one meanwhile. Other URIs are returned as given."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from stage_runtime import record

    if not model_uri.startswith("models:/"):
        return model_uri
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        found = record.find_model_version(client, model_uri)
    except (ValueError, MlflowException) as exc:
        raise RuntimeError(f"{model_uri} in {tracking_uri}: {exc}") from None
    if found is None:
        raise RuntimeError(f"{model_uri}: no such version in {tracking_uri}")
    name, version = found.name, found.version
    return f"models:/{name}/{version}"


def load_in_process(model_uri: str, tracking_uri: str) -> Any:
    """The model loaded in this process (mlflow.pyfunc), the reference the server must match."""
    import mlflow
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        return mlflow.pyfunc.load_model(model_uri)
    except MlflowException as exc:  # e.g. no such model in the store
        raise RuntimeError(f"{model_uri} in {tracking_uri}: {exc.message}") from None


def max_distance_miles(model: Any) -> float:
    """A loaded model's own distance limit (its encoders' max_distance_miles)."""
    return float(model.unwrap_python_model().encoders["max_distance_miles"])


def serving_benchmark(
    tracking_uri: str,
    model_uri: str,
    source: Path,
    workdir: Path,
    *,
    single_requests: int = SINGLE_REQUESTS,
    batch_rows: int = BATCH_ROWS,
    batch_repeats: int = BATCH_REPEATS,
) -> dict[str, Any]:
    """Start `mlflow models serve` of `model_uri` (from `workdir`, outside the project), warm
    it up, measure single-trip latency and batch throughput with real trips of the validation
    month in `source`, stop it; the numbers as a dict."""
    given, model_uri = model_uri, pinned_model_uri(model_uri, tracking_uri)
    model = load_in_process(model_uri, tracking_uri)
    trips = raw_trips(source / VALIDATION_FILE, batch_rows, max_distance_miles(model))
    if len(trips) < batch_rows:
        raise RuntimeError(f"{source / VALIDATION_FILE}: only {len(trips)} scorable trips")
    expected = np.asarray(model.predict(trips), dtype=np.float64)
    single, batch = request_body(trips.head(1)), request_body(trips)
    with served_model(model_uri, tracking_uri, workdir) as server:
        started = server.started_seconds
        result = measure(
            server.url,
            single,
            batch,
            expected,
            single_requests=single_requests,
            batch_repeats=batch_repeats,
        )
    return {
        "model_uri": given,
        "model_version_uri": model_uri,
        "command": f"mlflow models serve -m {model_uri} --env-manager local --no-conda",
        "columns": len(trips.columns),
        "server_start_seconds": round(started, 3),
    } | result


def build_project(workdir: Path, source: Path) -> str:
    """A scratch copy of the project after `dvc repro` on the months in `source`; its MLflow
    tracking URI (the store holds the registered model)."""
    from benchmarks.overhead import project_env, timed
    from workspaces.scratch import scratch_project

    env = project_env(workdir, source)
    repo = scratch_project(workdir / "project", env)
    timed(["dvc", "repro"], repo, env)
    return env["MLFLOW_TRACKING_URI"]


def summary(result: dict[str, Any]) -> str:
    single, batch = result["single"], result["batch"]
    return (
        f"{result['model_version_uri']}: server up in {result['server_start_seconds']} s; "
        f"1 trip: p50 {single['p50_ms']} ms, p99 {single['p99_ms']} ms "
        f"({single['requests']} sequential requests); "
        f"{batch['rows']:,}-trip batches: best {batch['best_trips_per_second']:,.0f} trips/s, "
        f"median {batch['median_trips_per_second']:,.0f} trips/s ({batch['repeats']} requests)"
    )


def main(argv: list[str] | None = None) -> None:
    from benchmarks.run import default_source

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tracking-uri", help="an existing store (default: build a project)")
    parser.add_argument("--model-uri", default=registered_model_uri())
    parser.add_argument("--source", type=Path, default=default_source(), help="the TLC mirror")
    parser.add_argument("--workdir", type=Path, help="scratch space (default: a temp dir)")
    parser.add_argument("--single-requests", type=int, default=SINGLE_REQUESTS)
    parser.add_argument("--batch-rows", type=int, default=BATCH_ROWS)
    parser.add_argument("--batch-repeats", type=int, default=BATCH_REPEATS)
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    if not (args.source / VALIDATION_FILE).is_file():
        parser.error(f"--source {args.source}: no {VALIDATION_FILE}")
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="taxi-serving-"))
        )
        tracking_uri = args.tracking_uri
        if tracking_uri is None:
            print(f"building a project in {workdir / 'project'} (dvc repro)", flush=True)
            tracking_uri = build_project(workdir, args.source)
        result = serving_benchmark(
            tracking_uri,
            args.model_uri,
            args.source,
            workdir / "serve",
            single_requests=args.single_requests,
            batch_rows=args.batch_rows,
            batch_repeats=args.batch_repeats,
        )
    result["tracking_uri"] = tracking_uri
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(summary(result))


if __name__ == "__main__":
    main()
