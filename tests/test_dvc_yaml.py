"""dvc.yaml itself: what DVC hands to a shell, and what each stage declares."""

from __future__ import annotations

import re

import yaml

from tests.conftest import ROOT


def stage_definitions() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def test_no_command_interpolates_a_param() -> None:
    """DVC runs `cmd` through a shell: a `${...}` there would run whatever a param holds."""
    for name, stage in stage_definitions().items():
        cmd = (stage.get("do") or stage)["cmd"]
        assert not re.search(r"\$\{", cmd), f"stage {name}: {cmd}"
