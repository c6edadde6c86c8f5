"""The window rule: which months train, validate and test, for retraining and backtests.

One owner of the rule params.yaml's `retrain` section describes. A window ends at month N:
N validates, the `train_months` months before N train, and the month before those tests.
The champion rule compares versions on the validation month, so a retraining decides on the
newest month there is; the test month is held out from training and from that decision.
"""

from __future__ import annotations

from dataclasses import dataclass

from stages.common import check_month


def month_index(month: str) -> int:
    """Months since year 0: consecutive months differ by one."""
    year, number = check_month(month).split("-")
    return int(year) * 12 + int(number) - 1


def month_of(index: int) -> str:
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def shift(month: str, months: int) -> str:
    return month_of(month_index(month) + months)


def month_range(first: str, last: str) -> list[str]:
    """Every month from `first` to `last`, both included."""
    start, end = month_index(first), month_index(last)
    if end < start:
        raise ValueError(f"{first} .. {last}: the last month is before the first")
    return [month_of(i) for i in range(start, end + 1)]


@dataclass(frozen=True)
class Window:
    test: str
    train: tuple[str, ...]
    validation: str

    @property
    def months(self) -> dict[str, str]:
        """As params.yaml's `data.months` holds it: month -> split, in month order."""
        splits = {self.test: "test", self.validation: "validation"}
        splits |= {month: "train" for month in self.train}
        return dict(sorted(splits.items()))

    @property
    def label(self) -> str:
        """`2024-02`: windows are named after their validation month."""
        return self.validation

    def describe(self) -> str:
        train = self.train[0] if len(self.train) == 1 else f"{self.train[0]}..{self.train[-1]}"
        return f"train {train}, validate {self.validation}, test {self.test}"


def ending_at(newest: str, train_months: int) -> Window:
    """The window whose validation month is `newest`."""
    if train_months < 1:
        raise ValueError(f"retrain.train_months: expected at least 1, got {train_months}")
    train = tuple(shift(newest, -k) for k in range(train_months, 0, -1))
    return Window(test=shift(newest, -train_months - 1), train=train, validation=newest)


def windows_within(first: str, last: str, train_months: int) -> list[Window]:
    """Every window whose months all lie in `first`..`last`, oldest first."""
    months = month_range(first, last)
    span = train_months + 2
    if len(months) < span:
        raise ValueError(
            f"{first} .. {last}: {len(months)} month(s); a window needs {span} "
            f"(a test month, {train_months} to train on, one to validate on)"
        )
    return [ending_at(month, train_months) for month in months[span - 1 :]]


def window_of(months: dict[str, str]) -> Window | None:
    """The window params.yaml's `data.months` describes, when it follows the rule."""
    by_split: dict[str, list[str]] = {}
    for month, split in sorted(months.items()):
        by_split.setdefault(split, []).append(month)
    validation, test = by_split.get("validation", []), by_split.get("test", [])
    if len(validation) != 1 or len(test) != 1:
        return None
    window = ending_at(validation[0], len(by_split.get("train", [])) or 1)
    return window if window.months == dict(sorted(months.items())) else None
