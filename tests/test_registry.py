"""Champion and challenger: the decision rule, and the record against a real MLflow registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry import champion
from registry.__main__ import main as registry_main
from registry.champion import Scores, decide

FEB = "data/clean/trips_2025-02.parquet:96a456a1c2219a02eb57f0f6eff9a8f7"
OTHER = "data/clean/trips_2025-02.parquet:0123456789abcdef0123456789abcdef"  # republished
MAR = "data/clean/trips_2025-03.parquet:73f3d436c9e5b1aef7742327cbc326a9"


def scores(version: str, validation: float, data: str = FEB, test: float = 5.0) -> Scores:
    return Scores(
        version, {"validation": validation, "test": test}, {"validation": data, "test": MAR}
    )


def test_the_first_version_becomes_champion():
    decision = decide(scores("1", 4.6), None, 0.01)
    assert decision.promote and decision.outcome == champion.FIRST


def test_a_challenger_must_beat_the_champion_by_the_margin():
    better = decide(scores("2", 4.50), scores("1", 4.60), 0.01)
    assert better.promote and better.outcome == champion.PROMOTED
    assert "4.5000 vs champion v1 4.6000" in better.reason and "better by 0.1000" in better.reason
    marginal = decide(scores("2", 4.595), scores("1", 4.60), 0.01)
    assert not marginal.promote and "better by only 0.0050 < 0.01" in marginal.reason
    worse = decide(scores("2", 6.3), scores("1", 4.6), 0.01)
    assert not worse.promote and worse.outcome == champion.KEPT and "not better" in worse.reason
    tie_with_no_margin = decide(scores("2", 4.6), scores("1", 4.6), 0.0)
    assert tie_with_no_margin.promote  # better by 0 >= a margin of 0


def test_the_champion_itself_is_already_champion():
    assert decide(scores("3", 4.6), scores("3", 4.6), 0.01).outcome == champion.ALREADY


def test_scores_on_other_validation_data_are_not_compared():
    with pytest.raises(champion.PromotionError, match="challenger's validation data"):
        decide(scores("2", 4.5), scores("1", 4.6, data=OTHER), 0.01)


def test_the_record_names_both_rmses_and_their_data():
    decision = decide(scores("2", 4.5), scores("1", 4.6), 0.01)
    tags = champion.decision_tags(
        decision, scores("2", 4.5), scores("1", 4.6), min_improvement=0.01, by="me", rescored=True
    )
    assert tags["promotion.outcome"] == "promoted"
    assert tags["promotion.validation_rmse"] == "4.500000"
    assert tags["promotion.champion_validation_rmse"] == "4.600000"
    assert tags["promotion.validation_data"] == FEB
    assert tags["promotion.champion_version"] == "1"
    assert tags["promotion.champion_rescored"] == "true"
    assert tags["promotion.min_improvement_minutes"] == "0.01"


def test_data_labels_are_path_ordered():
    assert champion.data_label({"b": "2", "a": "1"}) == "a:1,b:2"


# --------------------------------------------------------------------------- a real registry


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A real MLflow store (SQLite) with a registered model of three versions."""
    from stage_runtime import record

    monkeypatch.setenv(record.TRACKING_URI_ENV, f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    client = record.connect()
    client.create_registered_model("m")
    for _ in range(3):
        client.create_model_version("m", source=str(tmp_path), run_id=None)
    return client


def evaluated(client, version: str, validation: float, data: str = FEB) -> Scores:
    ours = scores(version, validation, data)
    for key, value in champion.scores_tags(ours).items():
        client.set_model_version_tag("m", version, key, value)
    client.set_model_version_tag("m", version, "validation.rmse", str(validation))
    client.set_model_version_tag("m", version, "test.rmse", "5.0")
    return ours


def decide_on_m(client, challenger: Scores, champion_scores, repo: Path) -> champion.Decision:
    """evaluate's promotion step on model "m" with a margin of 0.01 minutes."""
    return champion.decide_and_record(
        client,
        "m",
        challenger,
        min_improvement=0.01,
        champion_scores=champion_scores,
        repo=repo,
    )


def recorded(version):
    return champion.recorded_scores(version), False


def never_rescored(version):
    raise AssertionError(f"v{version.version} has scores on the same data: no rescoring")


def test_promotion_moves_the_alias_only_for_a_better_version(registry, tmp_path):
    champion.mark_challenger(registry, "m", "1")
    first = decide_on_m(registry, evaluated(registry, "1", 4.6), never_rescored, tmp_path)
    assert first.outcome == champion.FIRST
    assert champion.version_with_alias(registry, "m", champion.CHAMPION).version in (1, "1")
    assert champion.version_with_alias(registry, "m", champion.CHALLENGER) is None

    champion.mark_challenger(registry, "m", "2")
    worse = decide_on_m(registry, evaluated(registry, "2", 6.3), recorded, tmp_path)
    assert not worse.promote
    assert str(champion.version_with_alias(registry, "m", champion.CHAMPION).version) == "1"
    assert str(champion.version_with_alias(registry, "m", champion.CHALLENGER).version) == "2"
    tags = registry.get_model_version("m", "2").tags
    assert tags["promotion.outcome"] == "not_promoted"
    assert tags["promotion.champion_validation_rmse"] == "4.600000"

    again = decide_on_m(registry, evaluated(registry, "1", 4.6), never_rescored, tmp_path)
    assert again.outcome == champion.ALREADY
    assert registry.get_model_version("m", "1").tags["promotion.outcome"] == "first_version"


def test_a_champion_on_other_data_is_rescored_on_the_challengers(registry, tmp_path):
    evaluated(registry, "1", 4.6, data=OTHER)
    registry.set_registered_model_alias("m", champion.CHAMPION, "1")
    asked = []

    def rescored(version):
        asked.append(str(version.version))
        return scores(str(version.version), 4.4), True

    decision = decide_on_m(registry, evaluated(registry, "3", 4.5), rescored, tmp_path)
    assert asked == ["1"] and not decision.promote
    tags = registry.get_model_version("m", "3").tags
    assert tags["promotion.champion_rescored"] == "true"
    assert tags["promotion.champion_validation_rmse"] == "4.400000"
    assert tags["promotion.champion_evaluated_on"] == OTHER
    assert (
        f"re-scored on this version's validation data; it was evaluated on {OTHER}"
        in (tags["promotion.reason"])
    )


def test_a_person_promotes_or_rolls_back_by_hand(registry, tmp_path, capsys):
    evaluated(registry, "1", 4.6)
    evaluated(registry, "2", 4.5)
    registry.set_registered_model_alias("m", champion.CHAMPION, "2")
    assert registry_main(["--model", "m", "promote", "1", "--reason", "roll back"]) == 0
    assert str(champion.version_with_alias(registry, "m", champion.CHAMPION).version) == "1"
    tags = registry.get_model_version("m", "1").tags
    assert tags["promotion.outcome"] == "promoted_by_hand"
    assert tags["promotion.reason"] == "roll back"
    assert tags["promotion.champion_version"] == "2"
    assert tags["promotion.champion_validation_rmse"] == "4.500000"
    assert registry_main(["--model", "m", "show"]) == 0
    assert "champion: v1" in capsys.readouterr().out
    assert registry_main(["--model", "m", "promote", "9", "--reason", "x"]) == 3
    assert "has no version '9'" in capsys.readouterr().err
