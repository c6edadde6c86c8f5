"""stage_runtime/http_store.py without a server: when it writes the record, and a server that does
not answer costs the retries MLflow's settings allow, no more. Against the real MLflow server:
tests/test_team.py."""

from __future__ import annotations

import socket
import time

import pytest

from stage_runtime import http_store
from stage_runtime.http_store import HttpStore, ServerUnavailableError
from stages.common import TransientError


def test_only_plain_servers_are_written_without_mlflow(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in http_store.CLIENT_ONLY_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    assert http_store.usable("http://mlflow.internal:5000")
    assert http_store.usable("https://mlflow.example.org")
    assert not http_store.usable("sqlite:///mlflow.db")
    assert not http_store.usable("databricks")
    monkeypatch.setenv("MLFLOW_TRACKING_CLIENT_CERT_PATH", "/etc/client.pem")
    assert not http_store.usable("https://mlflow.example.org")


def test_credentials_go_in_the_authorization_header(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "ana")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret")
    assert HttpStore("http://h:1").headers["Authorization"] == "Basic YW5hOnMzY3JldA=="
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "t0k")
    assert HttpStore("http://h:1").headers["Authorization"] == "Bearer t0k"


def test_a_server_that_does_not_answer_costs_the_configured_retries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0.1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "0.5")
    with socket.socket() as hung:  # accepts connections, never answers
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)
        store = HttpStore(f"http://127.0.0.1:{hung.getsockname()[1]}", "0")
        began = time.monotonic()
        with pytest.raises(ServerUnavailableError, match="runs/create failed 3 times") as info:
            store.create_run({}, run_name="x")
        # three attempts of 0.5 s and back-offs of 0.1 + 0.2 s
        assert 1.5 <= time.monotonic() - began < 5
    assert isinstance(info.value, TransientError)  # a stage exits 75, the flow retries it


def test_metric_values_are_written_as_protobuf_json_writes_doubles() -> None:
    assert [http_store._number(v) for v in (1, 2.5, float("nan"), float("inf"), -float("inf"))] == [
        1.0, 2.5, "NaN", "Infinity", "-Infinity"
    ]  # fmt: skip
