"""Champion and challenger: which registered version is the one to use, and why.

The one owner of the aliases and of the promotion record. Every new version gets the alias
`challenger` (train). evaluate compares it with the current `champion` on the same validation
month and moves `champion` only when the challenger's validation RMSE is lower by at least
`promote.min_improvement_minutes`; the first version becomes champion. A person promotes or
rolls back by hand with `python -m registry promote <version>`. Every decision is written on
the version as `promotion.*` tags (the outcome, the reason, both RMSEs on validation and test,
the data they were measured on, who decided), before the alias moves.

"The same validation month" is a fact, not a name: the md5 of the cleaned validation file(s).
When the champion was evaluated on other bytes (another month, or a month the TLC
republished), its RMSEs are recomputed on this version's data from its own model and encoders
files (read as JSON, nothing executed), so both are measured on the same trips.
"""

from __future__ import annotations

import contextlib
import getpass
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stage_runtime import record

CHAMPION, CHALLENGER = "champion", "challenger"
TAG_PREFIX = "promotion."
# Tags evaluate writes on every version it evaluates: the data its metrics were measured on.
DATA_TAG = "{split}.data"
SPLITS = ("validation", "test")
# Outcomes, as written in `promotion.outcome`.
PROMOTED, KEPT, FIRST, ALREADY, BY_HAND = (
    "promoted",
    "not_promoted",
    "first_version",
    "already_champion",
    "promoted_by_hand",
)
# How a decision reads in a log line or a report: "<model> v4 <verdict>: <reason>".
VERDICTS = {
    PROMOTED: "promoted to champion",
    FIRST: "promoted to champion",
    BY_HAND: "promoted to champion by hand",
    ALREADY: "is already champion",
    KEPT: "not promoted",
}
# A concurrent evaluation may move the champion between reading and writing it: re-decide.
COMPARE_AND_SET_ATTEMPTS = 3


class PromotionError(RuntimeError):
    """A promotion that cannot be done: the message says why."""


@dataclass(frozen=True)
class Scores:
    """One version's RMSE per split, and the data (path:md5 of the cleaned files) of each."""

    version: str
    rmse: Mapping[str, float]
    data: Mapping[str, str]


@dataclass(frozen=True)
class Decision:
    outcome: str
    reason: str

    @property
    def promote(self) -> bool:
        return self.outcome in (PROMOTED, FIRST, BY_HAND)


def data_label(files: Mapping[str, str]) -> str:
    """`path:md5` of each cleaned file of a split, in path order: what the split's data is."""
    return ",".join(f"{path}:{md5}" for path, md5 in sorted(files.items()))


def decide(challenger: Scores, champion: Scores | None, min_improvement: float) -> Decision:
    """Promote when there is no champion, or when the challenger's validation RMSE beats the
    champion's on the same data by at least `min_improvement` minutes."""
    if champion is None:
        return Decision(FIRST, "first version: there is no champion yet")
    if champion.version == challenger.version:
        return Decision(ALREADY, f"version {challenger.version} is already the champion")
    if champion.data["validation"] != challenger.data["validation"]:
        raise PromotionError("the champion's scores must be on the challenger's validation data")
    ours, theirs = challenger.rmse["validation"], champion.rmse["validation"]
    gain = theirs - ours
    compared = (
        f"validation RMSE {ours:.4f} vs champion v{champion.version} {theirs:.4f} on the same month"
    )
    if gain >= min_improvement:
        return Decision(
            PROMOTED, f"{compared}: better by {gain:.4f} >= {min_improvement:g} minutes"
        )
    if gain > 0:
        return Decision(
            KEPT, f"{compared}: better by only {gain:.4f} < {min_improvement:g} minutes"
        )
    return Decision(KEPT, f"{compared}: not better ({-gain:+.4f} minutes)")


def decision_tags(
    decision: Decision,
    challenger: Scores,
    champion: Scores | None,
    *,
    min_improvement: float | None,
    by: str,
    rescored: bool = False,
    champion_data: str | None = None,
) -> dict[str, str]:
    """The `promotion.*` tags that record a decision on the challenger's version;
    `champion_data`: what the champion was evaluated on (its own `validation.data`)."""
    tags = {
        "outcome": decision.outcome,
        "reason": decision.reason,
        "decided_by": by,
        "decided_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if min_improvement is not None:
        tags["min_improvement_minutes"] = f"{min_improvement:g}"
    for split in SPLITS:
        if split in challenger.rmse:
            tags[f"{split}_rmse"] = f"{challenger.rmse[split]:.6f}"
            tags[f"{split}_data"] = challenger.data[split]
    if champion is not None:
        tags["champion_version"] = champion.version
        tags["champion_rescored"] = str(rescored).lower()
        if champion_data:
            tags["champion_evaluated_on"] = champion_data
        for split in SPLITS:
            if split in champion.rmse:
                tags[f"champion_{split}_rmse"] = f"{champion.rmse[split]:.6f}"
    return {TAG_PREFIX + key: value for key, value in tags.items()}


def who() -> str:
    """The person or process deciding: user@host."""
    with contextlib.suppress(Exception):
        return f"{getpass.getuser()}@{socket.gethostname()}"
    return socket.gethostname()


# --------------------------------------------------------------------------- the registry


def version_with_alias(client: Any, name: str, alias: str) -> Any | None:
    try:
        return client.get_model_version_by_alias(name, alias)
    except Exception as exc:
        if record.is_not_found(exc):
            return None
        raise


def _number(version: Any | None) -> str | None:
    """A version's number as text (MLflow hands out ints from some calls, text from others)."""
    return None if version is None else str(version.version)


def mark_challenger(client: Any, name: str, version: str) -> None:
    """A new version is the challenger until evaluate decides."""
    client.set_registered_model_alias(name, CHALLENGER, version)


def recorded_scores(version: Any) -> Scores | None:
    """A version's scores as evaluate tagged them, or None when it was never evaluated."""
    tags = version.tags
    rmse, data = {}, {}
    for split in SPLITS:
        if f"{split}.rmse" not in tags or DATA_TAG.format(split=split) not in tags:
            return None
        rmse[split] = float(tags[f"{split}.rmse"])
        data[split] = tags[DATA_TAG.format(split=split)]
    return Scores(str(version.version), rmse, data)


def scores_tags(scores: Scores) -> dict[str, str]:
    """The data tags evaluate writes beside `validation.rmse`, `test.rmse`."""
    return {DATA_TAG.format(split=split): scores.data[split] for split in SPLITS}


def record_decision(
    client: Any, name: str, version: str, tags: Mapping[str, str], promote: bool
) -> None:
    """Tags first, then the alias (one call): a failure in between leaves the record saying
    what was decided and the champion where it was."""
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    if promote:
        client.set_registered_model_alias(name, CHAMPION, version)
        challenger = version_with_alias(client, name, CHALLENGER)
        if challenger is not None and str(challenger.version) == str(version):
            client.delete_registered_model_alias(name, CHALLENGER)


@contextlib.contextmanager
def promotion_lock(repo: Path) -> Iterator[None]:
    """One promotion at a time on this machine (parallel experiments share the registry);
    across machines the champion is re-read before it moves (compare and set)."""
    from stage_runtime.locks import file_lock, git_common_dir

    try:
        lock_dir = git_common_dir(repo)
    except Exception:  # not a git repository: nothing shares this registry through it
        lock_dir = repo / ".dvc" / "tmp"
    with file_lock(lock_dir / "taxi-pipeline-promotion.lock", "promote a model version"):
        yield


def decide_and_record(
    client: Any,
    name: str,
    challenger: Scores,
    *,
    min_improvement: float,
    champion_scores: Callable[[Any], tuple[Scores, bool]],
    repo: Path,
) -> Decision:
    """evaluate's promotion step: compare `challenger` with the current champion
    (`champion_scores(champion_version)` gives the champion's scores on the challenger's data,
    and whether they had to be recomputed), record the decision on the challenger's version,
    move the alias when it wins. The champion is read again before the alias moves; if another
    evaluation moved it meanwhile, the decision is made again against the new one."""
    with promotion_lock(repo):
        for _ in range(COMPARE_AND_SET_ATTEMPTS):
            current = version_with_alias(client, name, CHAMPION)
            scores, rescored = None, False
            if current is not None and str(current.version) != challenger.version:
                scores, rescored = champion_scores(current)
            elif current is not None:
                scores = challenger
            decision = decide(challenger, scores, min_improvement)
            own_data = current.tags.get(DATA_TAG.format(split="validation")) if current else None
            if rescored:
                decision = Decision(
                    decision.outcome,
                    f"{decision.reason} (champion v{current.version} re-scored on this "
                    "version's validation data; it was evaluated on "
                    f"{own_data or 'unrecorded data'})",
                )
            again = version_with_alias(client, name, CHAMPION)
            if _number(again) != _number(current):
                continue  # the champion moved while this one was being compared
            tags = scores_tags(challenger)
            if decision.outcome != ALREADY:  # the version's own promotion record stays
                tags |= decision_tags(
                    decision,
                    challenger,
                    scores,
                    min_improvement=min_improvement,
                    by=f"evaluate ({who()})",
                    rescored=rescored,
                    champion_data=own_data,
                )
            record_decision(client, name, challenger.version, tags, decision.promote)
            return decision
    raise PromotionError(
        f"the champion of {name} kept moving while version {challenger.version} was compared "
        f"({COMPARE_AND_SET_ATTEMPTS} attempts)"
    )


def promote_by_hand(client: Any, name: str, version: str, reason: str) -> Decision:
    """A person's promotion or rollback: the version becomes champion, recorded like
    evaluate's decisions (its scores as evaluate tagged them, the champion it replaces)."""
    try:
        target = client.get_model_version(name, version)
    except Exception as exc:
        if not record.is_not_found(exc):
            raise
        raise PromotionError(f"{name} has no version {version!r}") from None
    previous = version_with_alias(client, name, CHAMPION)
    if _number(previous) == _number(target):
        return Decision(ALREADY, f"version {version} is already the champion")
    ours = recorded_scores(target) or Scores(str(target.version), {}, {})
    theirs = recorded_scores(previous) if previous is not None else None
    if previous is not None and theirs is None:
        theirs = Scores(str(previous.version), {}, {})
    decision = Decision(BY_HAND, reason)
    tags = decision_tags(decision, ours, theirs, min_improvement=None, by=who())
    record_decision(client, name, str(target.version), tags, promote=True)
    return decision
