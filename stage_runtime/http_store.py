"""The run record written to an MLflow tracking server through its REST API, with urllib.

A stage that only records its run (ingest, prepare, features) needs five calls of the API:
create a run, log a batch, log its datasets, end it. Through MLflow's client they cost the
import of MLflow first, about 2-3 s of every such stage process on the team server
(benchmarks/results/FINDINGS.md, issue 13); here they cost the requests. The same calls as
stage_runtime.sqlite_store.DirectStore, so a stage writes its record the same way to either store.

Used only where MLflow's client would send exactly these requests with nothing else to set
up: a plain http(s) URI whose authentication, if any, is a token or a user and password.
Client certificates, a custom CA, unverified TLS or an auth plugin stay with MLflow's client
(`usable` says which). Retries and timeouts are MLflow's own settings
(MLFLOW_HTTP_REQUEST_MAX_RETRIES, _BACKOFF_FACTOR, _TIMEOUT), so a dead server costs the same
seconds either way.
"""

from __future__ import annotations

import base64
import json
import math
import os
import time
from collections.abc import Iterable, Mapping
from typing import Any

from stages.common import EnvironmentRefusal, TransientError

API = "/api/2.0/mlflow"
# Settings only MLflow's client honours: with any of them set, it writes the record.
CLIENT_ONLY_SETTINGS = (
    "MLFLOW_TRACKING_INSECURE_TLS",
    "MLFLOW_TRACKING_SERVER_CERT_PATH",
    "MLFLOW_TRACKING_CLIENT_CERT_PATH",
    "MLFLOW_TRACKING_AUTH",
)
# MLflow's limits per log-batch request: larger batches go in several requests, as its client
# sends them.
BATCH_LIMITS = {"metrics": 1000, "params": 100, "tags": 100}
# Statuses worth another attempt (MLflow's client retries the same ones).
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class ServerError(EnvironmentRefusal):
    """The server refused a request (no use retrying it); `error_code` is MLflow's
    (RESOURCE_DOES_NOT_EXIST, ...)."""

    def __init__(self, message: str, error_code: str | None, status: int) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.status = status


class ServerUnavailableError(TransientError):
    """No answer from the server, or only errors worth a retry, after every attempt."""


def usable(uri: str) -> bool:
    """Whether this module writes the record for `uri` (else MLflow's client does)."""
    return uri.startswith(("http://", "https://")) and not any(
        os.environ.get(name) for name in CLIENT_ONLY_SETTINGS
    )


def _setting(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


class HttpStore:
    """One experiment of an MLflow tracking server, written through its REST API."""

    def __init__(self, uri: str, experiment_id: str = "") -> None:
        self.uri = uri.rstrip("/")
        self.experiment_id = experiment_id
        self.timeout = _setting("MLFLOW_HTTP_REQUEST_TIMEOUT", 120)
        self.retries = int(_setting("MLFLOW_HTTP_REQUEST_MAX_RETRIES", 7))
        self.backoff = _setting("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", 2)
        self.headers = {"Content-Type": "application/json", "User-Agent": "nyc-taxi-stages"}
        token = os.environ.get("MLFLOW_TRACKING_TOKEN")
        user, password = (os.environ.get(f"MLFLOW_TRACKING_{k}") for k in ("USERNAME", "PASSWORD"))
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        elif user and password:
            pair = base64.b64encode(f"{user}:{password}".encode()).decode()
            self.headers["Authorization"] = f"Basic {pair}"

    @classmethod
    def open(cls, uri: str, experiment: str) -> HttpStore:
        """The store with `experiment` in place (created on first use, by whichever process
        comes first)."""
        store = cls(uri)
        store.experiment_id = store.ensure_experiment(experiment)
        return store

    def call(self, method: str, endpoint: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """One API call; ServerError for a refusal, ServerUnavailableError once the retries
        for unreachable or overloaded servers are spent."""
        # Here, not at the top: http.client and email cost every stage process 25-40 ms,
        # and only a stage recording to a server makes these calls.
        import urllib.error
        import urllib.parse
        import urllib.request

        url = f"{self.uri}{API}/{endpoint}"
        data = None
        if method == "GET":
            url += "?" + urllib.parse.urlencode(body)
        else:
            data = json.dumps(body).encode()
        failure = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            request = urllib.request.Request(url, data, self.headers, method=method)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read() or b"{}")
            except urllib.error.HTTPError as exc:
                if exc.code not in RETRY_STATUSES:
                    raise _refusal(exc, f"{method} {url}") from None
                failure = f"HTTP {exc.code}"
            except (urllib.error.URLError, OSError) as exc:
                failure = str(getattr(exc, "reason", exc))
        raise ServerUnavailableError(
            f"MLflow tracking server {self.uri}: {endpoint} failed {self.retries + 1} times, "
            f"last: {failure}"
        )

    def ensure_experiment(self, name: str) -> str:
        try:
            found = self.call("GET", "experiments/get-by-name", {"experiment_name": name})
            return str(found["experiment"]["experiment_id"])
        except ServerError as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
        try:
            return str(self.call("POST", "experiments/create", {"name": name})["experiment_id"])
        except ServerError as exc:  # another process created it meanwhile
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        found = self.call("GET", "experiments/get-by-name", {"experiment_name": name})
        return str(found["experiment"]["experiment_id"])

    def close(self) -> None:
        pass

    def create_run(self, tags: Mapping[str, str], run_name: str) -> str:
        body = {
            "experiment_id": self.experiment_id,
            "user_id": tags.get("mlflow.user", "unknown"),
            "start_time": int(time.time() * 1000),
            "run_name": run_name,
            "tags": _pairs(tags),
        }
        return str(self.call("POST", "runs/create", body)["run"]["info"]["run_id"])

    def log_batch(
        self,
        run_id: str,
        metrics: Mapping[str, float] | None = None,
        params: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        """Metrics at step 0 now, params (a different value for a logged key is refused by
        the server), tags (overwritten), in as many requests as MLflow's limits need."""
        now = int(time.time() * 1000)
        entries = {
            "metrics": [
                {"key": k, "value": _number(v), "timestamp": now, "step": 0}
                for k, v in (metrics or {}).items()
            ],
            "params": _pairs({k: str(v) for k, v in (params or {}).items()}),
            "tags": _pairs(tags or {}),
        }
        for kind, limit in BATCH_LIMITS.items():
            for start in range(0, len(entries[kind]), limit):
                self.call(
                    "POST",
                    "runs/log-batch",
                    {"run_id": run_id, kind: entries[kind][start : start + limit]},
                )

    def log_inputs(self, run_id: str, datasets: Iterable[tuple[str, str, str, str]]) -> None:
        """Datasets as `(name, digest, source JSON, context)`, context `input` or `output`."""
        entries = [
            {
                "dataset": {
                    "name": name,
                    "digest": digest,
                    "source_type": "http",
                    "source": source,
                },
                "tags": [{"key": "mlflow.data.context", "value": context}],
            }
            for name, digest, source, context in datasets
        ]
        self.call("POST", "runs/log-inputs", {"run_id": run_id, "datasets": entries})

    def set_terminated(self, run_id: str, status: str) -> None:
        body = {"run_id": run_id, "status": status, "end_time": int(time.time() * 1000)}
        self.call("POST", "runs/update", body)


def _number(value: float) -> float | str:
    """A metric value as protobuf's JSON writes a double: non-finite ones as strings."""
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def _pairs(values: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"key": k, "value": str(v)} for k, v in values.items()]


def _refusal(exc: Any, request: str) -> ServerError:
    """The server's own error (an HTTPError), as MLflow's client reports it."""
    try:
        detail = json.loads(exc.read() or b"{}")
    except (ValueError, OSError):
        detail = {}
    code = detail.get("error_code") if isinstance(detail, dict) else None
    message = detail.get("message") if isinstance(detail, dict) else None
    return ServerError(
        f"{request}: HTTP {exc.code} {code or exc.reason}: {message or ''}".rstrip(": "),
        code,
        exc.code,
    )
