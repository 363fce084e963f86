"""The student's report as data: its ablation rows, its conclusions and its numbers."""

from __future__ import annotations

from dataclasses import dataclass, field

from .config import PAPER, ConfigError, TrainConfig, did_you_mean


@dataclass(frozen=True)
class Ablation:
    """One row of the report's ablation tables: its settings and its reported numbers."""

    key: str
    tables: tuple[int, ...]
    changes: dict = field(default_factory=dict)
    paper_loss: float = 0.0  # final epoch's summed training loss, as reported
    paper_val_acc: float = 0.0  # final validation accuracy, as reported

    @property
    def where(self) -> str:
        """Where the report gives this row, e.g. "tables 2, 6, 7, 9: baseline"."""
        return f"table{'s' if len(self.tables) > 1 else ''} {', '.join(map(str, self.tables))}: {self.key}"


# Its ablation tables 1-10: seven distinct 30-epoch configurations, one run each.
ABLATIONS: tuple[Ablation, ...] = (
    Ablation("baseline", (2, 6, 7, 9), {}, 130.22897, 0.7871),
    Ablation("decay_1.0", (1,), {"decay_rate": 1.0}, 132.08587, 0.7645),
    Ablation("decay_0.45", (3,), {"decay_rate": 0.45}, 154.83982, 0.5028),
    Ablation("dropout_0.8", (4,), {"dropout": 0.8}, 135.25858, 0.7292),
    Ablation("dropout_0.4", (5,), {"dropout": 0.4}, 132.42525, 0.7640),
    Ablation("no_stem_bn", (8,), {"stem_bn": False}, 132.10440, 0.7608),
    Ablation("stem_7x7", (10,), {"stem": "7x7"}, 138.71478, 0.6924),
)

# The rows each notebook-04 run compares (the baseline always included).
ABLATION_GROUPS = {
    "lr_decay": ("baseline", "decay_1.0", "decay_0.45"),
    "dropout": ("baseline", "dropout_0.4", "dropout_0.8"),
    "stem_bn": ("baseline", "no_stem_bn"),
    "stem_kernel": ("baseline", "stem_7x7"),
}

# Its conclusions (§4.6) per group: (claim, better row, worse row, claimed size?). A claimed
# size is its own difference, computed from its reported accuracies.
CLAIMS: dict[str, list[tuple[str, str, str, bool]]] = {
    "lr_decay": [
        ("decay 0.9 beats 1.0", "baseline", "decay_1.0", False),
        ("decay 1.0 beats 0.45", "decay_1.0", "decay_0.45", False),
    ],
    "dropout": [
        ("dropout 0.4 hurts at 30 epochs", "baseline", "dropout_0.4", False),
        ("dropout 0.8 hurts at 30 epochs", "baseline", "dropout_0.8", False),
    ],
    "stem_bn": [("stem BN helps", "baseline", "no_stem_bn", True)],
    "stem_kernel": [("a 3x3 stem beats 7x7 stride 2", "baseline", "stem_7x7", True)],
}

NUMBERS = {
    "final_loss": 126.53595,  # table 11, 60 epochs
    "final_test_acc": 0.8336,
    "depth_test_acc": {2: 0.8632, 3: 0.8927},  # after checkpoint tuning that watched the test set
}


def ablation(key: str) -> Ablation:
    for a in ABLATIONS:
        if a.key == key:
            return a
    keys = [a.key for a in ABLATIONS]
    raise ConfigError(f"unknown ablation {key!r}{did_you_mean(key, keys)} (known: {keys})")


def ablation_config(key: str, base: TrainConfig = PAPER) -> TrainConfig:
    return base.replace(**ablation(key).changes)


# Its final run (table 11): its best ablation settings (the baseline's) for 60 epochs, tested once.
FINAL = PAPER.replace(epochs=60)
