"""Months over time, the pure parts: the window rule, the source's months and identity (a real
local mirror and a real HTTP server on loopback), upstream checks, the backtest's table."""

from __future__ import annotations

import http.server
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from stage_runtime.record import parse_lock, read_lock
from stages.common import file_md5
from stages.ingest import fetch
from stages.tlc import SOURCE_ENV, trip_address, trip_file_name
from tests.conftest import ROOT, sample_month
from timeline import backtest as bt
from timeline import source, upstream
from timeline.window import Window, ending_at, month_range, shift, window_of, windows_within
from workspaces.experiments import apply_overrides, override_args
from workspaces.repro import prune_lock

# --------------------------------------------------------------------------- the window rule


def test_window_ending_at_a_month_validates_on_it_and_tests_before_training():
    window = ending_at("2024-04", 1)
    assert window == Window(test="2024-02", train=("2024-03",), validation="2024-04")
    assert window.months == {"2024-02": "test", "2024-03": "train", "2024-04": "validation"}
    two = ending_at("2024-01", 2)
    assert two.months == {
        "2023-10": "test",
        "2023-11": "train",
        "2023-12": "train",
        "2024-01": "validation",
    }


def test_months_cross_years_and_ranges_are_inclusive():
    assert shift("2023-12", 1) == "2024-01"
    assert shift("2024-01", -13) == "2022-12"
    assert month_range("2023-11", "2024-02") == ["2023-11", "2023-12", "2024-01", "2024-02"]
    with pytest.raises(ValueError, match="before the first"):
        month_range("2024-02", "2024-01")
    with pytest.raises(Exception, match="YYYY-MM"):
        month_range("2024-13", "2024-14")


def test_windows_within_a_range_use_only_its_months():
    windows = windows_within("2023-12", "2024-04", 1)
    assert [w.validation for w in windows] == ["2024-02", "2024-03", "2024-04"]
    assert all(set(w.months) <= set(month_range("2023-12", "2024-04")) for w in windows)
    with pytest.raises(ValueError, match="a window needs 4"):
        windows_within("2024-01", "2024-03", 2)


def test_window_of_params_recognises_only_the_rule():
    assert window_of(ending_at("2024-03", 1).months) == ending_at("2024-03", 1)
    # The project's default months (train, validation, test in that order) are not a window.
    assert window_of({"2025-01": "train", "2025-02": "validation", "2025-03": "test"}) is None


def test_a_window_overrides_data_months_as_dvc_exp_run_would(tmp_path):
    shutil.copyfile(ROOT / "params.yaml", tmp_path / "params.yaml")
    months = ending_at("2024-04", 1).months
    assert override_args({"data.months": months}) == [
        "~data.months",
        "+data.months={2024-02:test,2024-03:train,2024-04:validation}",
    ]
    apply_overrides(tmp_path, {"data.months": months})
    from stages.common import load_params

    assert load_params("data", path=tmp_path / "params.yaml")["data"].months == months


# --------------------------------------------------------------------------- the source


@pytest.fixture
def mirror(tmp_path: Path, shared_tlc: Path) -> Path:
    """A local mirror of small samples of three real 2024 months."""
    directory = tmp_path / "mirror"
    directory.mkdir()
    for month in ("2024-01", "2024-02", "2024-03"):
        name = trip_file_name("green", month)
        sample_month(shared_tlc / name, directory / name, stride=200)
    (directory / "README.md").write_text("not a trip file\n")
    return directory


def test_a_local_mirror_lists_its_months(mirror):
    assert source.local_months(mirror, "green") == ["2024-01", "2024-02", "2024-03"]
    assert source.local_months(mirror, "yellow") == []
    with pytest.raises(source.SourceError, match="not a directory"):
        source.local_months(mirror / "nothing", "green")


def test_a_local_month_is_unchanged_changed_or_gone(mirror, shared_tlc):
    path = mirror / trip_file_name("green", "2024-02")
    ingested = file_md5(path)
    assert source.check_local("2024-02", "raw", str(path), ingested).status == source.UNCHANGED
    sample_month(shared_tlc / path.name, path, stride=199)  # republished: other bytes
    changed = source.check_local("2024-02", "raw", str(path), ingested)
    assert changed.changed and ingested in changed.detail
    path.unlink()
    assert source.check_local("2024-02", "raw", str(path), ingested).status == source.GONE


def test_upstream_check_reads_the_months_of_a_dvc_lock(mirror, shared_tlc, monkeypatch):
    monkeypatch.setenv(SOURCE_ENV, str(mirror))
    name = trip_file_name("green", "2024-02")
    lock = parse_lock(
        "schema: '2.0'\nstages:\n"
        f"  ingest@2024-02:\n    cmd: x\n    outs:\n    - path: data/raw/{name}\n"
        f"      md5: {file_md5(mirror / name)}\n      size: 1\n"
        "  features:\n    cmd: y\n"
    )
    from stages.common import parse_section

    data = parse_section(
        "data",
        {
            "colour": "green",
            "months": ending_at("2024-03", 1).months,
            "trips_url": "https://example.invalid/trip-data",
            "zones_url": "https://example.invalid/zones.csv",
        },
    )
    checks = upstream.check_months(data, lock, mirror)
    assert [(c.month, c.status) for c in checks] == [("2024-02", source.UNCHANGED)]
    sample_month(shared_tlc / name, mirror / name, stride=150)
    checks = upstream.check_months(data, lock, mirror)
    assert upstream.reingest_stages(checks) == ["ingest@2024-02"]
    assert any("--reingest" in line for line in upstream.notice(checks))


class _Mirror(http.server.SimpleHTTPRequestHandler):
    """A real HTTP server over a directory, with an ETag as CloudFront sends (md5 of the file):
    Python's own handler sends Last-Modified and Content-Length only."""

    def end_headers(self) -> None:
        path = Path(self.translate_path(self.path))
        if path.is_file():
            self.send_header("ETag", f'"{file_md5(path)}"')
        super().end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def http_mirror(mirror):
    def handler(*args, **kwargs):
        return _Mirror(*args, directory=str(mirror), **kwargs)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", mirror
    server.shutdown()
    server.server_close()


def test_an_http_source_is_probed_month_by_month(http_mirror):
    url, _ = http_mirror
    from stages.common import parse_section

    data = parse_section(
        "data",
        {
            "colour": "green",
            "months": ending_at("2024-02", 1).months,
            "trips_url": url,
            "zones_url": f"{url}/taxi_zone_lookup.csv",
        },
    )
    env = {k: v for k, v in os.environ.items() if k != SOURCE_ENV}
    assert source.published_months(data, "2024-01", env) == ["2024-01", "2024-02", "2024-03"]


def test_an_http_file_is_identified_by_its_headers_and_a_republication_is_seen(
    http_mirror, tmp_path, shared_tlc
):
    url, directory = http_mirror
    name = trip_file_name("green", "2024-02")
    address = trip_address("green", url, "2024-02", {})
    identity = fetch(address, tmp_path / name)
    assert file_md5(tmp_path / name) == file_md5(directory / name)
    assert "ETag" in identity and "Last-Modified" in identity and "Content-Length" in identity
    assert source.check_http("2024-02", "raw", address, identity).status == source.UNCHANGED
    assert source.check_http("2024-02", "raw", address, None).status == source.UNKNOWN
    time.sleep(1.1)  # Last-Modified has a resolution of one second
    sample_month(shared_tlc / name, directory / name, stride=97)
    assert source.check_http("2024-02", "raw", address, identity).changed
    (directory / name).unlink()
    assert source.check_http("2024-02", "raw", address, identity).status == source.GONE


def test_an_unreachable_source_is_named_within_seconds():
    started = time.perf_counter()
    with pytest.raises(source.SourceError, match="127.0.0.1:9"):
        source.head("http://127.0.0.1:9/green_tripdata_2024-01.parquet", timeout=2)
    assert time.perf_counter() - started < 5


# --------------------------------------------------------------------------- dvc.lock


def test_prune_lock_removes_only_the_stages_dvc_yaml_no_longer_has(tmp_path):
    shutil.copyfile(ROOT / "dvc.lock", tmp_path / "dvc.lock")
    before = read_lock(tmp_path / "dvc.lock")
    keep = [name for name in before if name not in {"ingest@2025-01", "prepare@2025-01"}]
    assert prune_lock(tmp_path, keep) == ["ingest@2025-01", "prepare@2025-01"]
    after = read_lock(tmp_path / "dvc.lock")
    assert list(after) == keep
    assert all(after[name] == before[name] for name in keep)
    assert prune_lock(tmp_path, keep) == []


# --------------------------------------------------------------------------- backtest


def test_backtest_types_runs_and_table():
    assert bt.model_types("ridge, xgboost,ridge") == ["ridge", "xgboost"]
    with pytest.raises(ValueError, match="--model-type"):
        bt.model_types("ridge,forest")
    runs = bt.plan_runs(windows_within("2023-12", "2024-03", 1), ["ridge", "xgboost"])
    assert [(r.window.validation, r.model_type) for r in runs] == [
        ("2024-02", "ridge"),
        ("2024-02", "xgboost"),
        ("2024-03", "ridge"),
        ("2024-03", "xgboost"),
    ]
    overrides = runs[0].overrides("taxi")
    assert overrides["model.registered_name"] == "taxi-backtest"
    metrics = {
        "validation_rmse": 4.5,
        "test_rmse": 4.6,
        "train_rmse": 4.4,
        "model_version": "3",
        "experiment": "x-2024-02-ridge",
    }
    rows = [
        bt.row(runs[0], metrics, None),
        bt.row(runs[1], None, "ingest@2024-01: no such file"),
        bt.row(runs[2], metrics | {"validation_rmse": 4.25}, None),
    ]
    table = bt.rmse_table(rows)
    assert "| 2024-02 | 4.5000 | failed |" in table
    assert "| 2024-03 | 4.2500 |  |" in table
    assert bt.failures(rows) == ["2024-02 xgboost: ingest@2024-01: no such file"]
