"""Training configuration: one TOML file per dataset (features, model, training knobs)."""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from models.data import PROTOCOLS
from models.features import HISTORY_KINDS, FeatureConfigError, FeatureDef
from models.losses import LOSSES
from models.teacher import TEACHERS
from models.two_tower import ModelConfig

SAMPLERS = ("auto", "uniform", "popularity")
DEVICES = ("auto", "cpu", "cuda")
SHARDINGS = ("table-wise", "column-wise")  # row-wise needs GPUs and NCCL


@dataclass(frozen=True)
class TrainSettings:
    """Knobs of the training loop (loss, optimiser, negatives, stopping)."""

    loss: str = "listwise"
    epochs: int = 40
    batch_size: int = 512
    lr: float = 3e-3
    weight_decay: float = 0.0
    patience: int = 4
    metric: str = "recall@10"  # early-stopping metric on the validation split
    num_negatives: int = 3  # pointwise / pairwise negatives per positive
    margin: float = 0.2  # pairwise-hinge
    sampled_negatives: int = 0  # listwise: extra shared negatives per batch
    # Sampled negatives: auto | uniform | popularity. ``auto`` is popularity (count^0.75) for
    # listwise, whose logQ correction undoes the sampling bias, and uniform for pointwise and
    # pairwise, which have no correction: popularity-sampled negatives there teach the model
    # to rank popular items down (measured on ml-100k random-811, seed 0: Recall@10 0.129 ->
    # 0.236 pointwise, 0.087 -> 0.182 pairwise-logistic with uniform negatives).
    sampler: str = "auto"
    log_q: bool = True  # listwise logQ correction
    log_q_weight: float = 1.0  # scale of the correction (1 = the unbiased full-softmax estimate)
    hard_negatives: int = 0  # listwise: per-row hard negatives mined from the current model
    hard_skip_top: int = 10
    remove_accidental_hits: bool = True
    mask_known_positives: bool = True  # listwise: a user's other training items are not negatives
    # > 0: early stopping validates, and the run keeps, an exponential moving average of the
    # weights (see models.train.WeightAverage) instead of the last optimiser step's weights.
    ema_decay: float = 0.0
    ema_start_share: float = 0.1  # the most the initial weights weigh in the average
    # Distillation (models.teacher): add teacher_weight * cross-entropy against the teacher's
    # softmax over the catalogue to the loss. "ease" needs a catalogue EASE can invert (20k
    # items); "none" = off.
    teacher: str = "none"
    teacher_weight: float = 1.0
    teacher_temperature: float = 0.05
    teacher_reg: float = 250.0  # EASE's L2 weight, as the baseline's
    # An interactions field (``:float``, e.g. ``rating``) whose values weight each training
    # example's term of the loss (normalised to mean 1 over the training rows); "" weighs all 1.
    weight_field: str = ""
    refit: bool = True  # after early stopping, retrain on train + valid for the best epoch count
    seed: int = 0
    sparse_rows: int = 100_000  # embedding tables this big train with sparse gradients
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    device: str = "auto"  # auto (cuda when available) | cpu | cuda
    # Under torchrun (models.distributed): how the id tables are sharded, and the row-wise
    # Adagrad rate of sharded tables of sparse_rows rows or more (FBGEMM's CPU kernel has no Adam).
    sharding: str = "table-wise"  # table-wise | column-wise
    sharded_lr: float = 0.05
    # Full-ranking evaluation (validation and test) scores every user with held-out items up
    # to this many, and a seeded sample of this many beyond it; 0 = every user.
    eval_users: int = 20_000

    def __post_init__(self) -> None:
        # A typo would otherwise silently train another loss or sampler.
        if self.loss not in LOSSES:
            raise ValueError(f"[train] loss {self.loss!r} is not one of {LOSSES}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"[train] sampler {self.sampler!r} is not one of {SAMPLERS}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"[train] ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.eval_users < 0:
            raise ValueError(
                f"[train] eval_users must be >= 0 (0 = every user), got {self.eval_users}"
            )
        if not (math.isfinite(self.sharded_lr) and self.sharded_lr > 0):
            raise ValueError(
                f"[train] sharded_lr must be a finite number > 0, got {self.sharded_lr}"
            )
        if not 0.0 <= self.ema_start_share <= 1.0:
            raise ValueError(
                f"[train] ema_start_share must be in [0, 1], got {self.ema_start_share}"
            )
        if self.sharding not in SHARDINGS:
            raise ValueError(f"[train] sharding {self.sharding!r} is not one of {SHARDINGS}")
        if self.device not in DEVICES:
            raise ValueError(f"[train] device {self.device!r} is not one of {DEVICES}")
        if self.teacher not in TEACHERS:
            raise ValueError(f"[train] teacher {self.teacher!r} is not one of {TEACHERS}")
        for key in ("teacher_temperature", "teacher_reg"):
            if not (math.isfinite(getattr(self, key)) and getattr(self, key) > 0):
                raise ValueError(f"[train] {key} must be a finite number > 0")
        if not (math.isfinite(self.teacher_weight) and self.teacher_weight >= 0):
            raise ValueError("[train] teacher_weight must be a finite number >= 0")

    @property
    def negative_sampler(self) -> str:
        """The sampler in effect: ``sampler`` with ``auto`` resolved for ``loss``."""
        if self.sampler != "auto":
            return self.sampler
        return "popularity" if self.loss == "listwise" else "uniform"

    def torch_device(self) -> torch.device:
        """``device`` resolved: ``auto`` is CUDA when a GPU is visible, else the CPU."""
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("[train] device = 'cuda' but torch sees no GPU; use auto or cpu")
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainSettings:
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"[train] has unknown keys {sorted(unknown)}")
        return cls(**raw)


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs, read from ``configs/<dataset>.toml``."""

    dataset: str
    data_dir: str
    user_features: list[FeatureDef]
    item_features: list[FeatureDef]
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainSettings = field(default_factory=TrainSettings)
    # [train.<split>] tables: training knobs that differ under one split protocol. for_split
    # applies them (run_training does); knobs given on the command line afterwards still win.
    split_train: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for split, changes in self.split_train.items():
            if split not in PROTOCOLS:
                raise ValueError(
                    f"[train.{split}]: {split!r} is not a split; use one of {PROTOCOLS}"
                )
            unknown = set(changes) - set(TrainSettings.__dataclass_fields__)
            if unknown:
                raise ValueError(f"[train.{split}] has unknown keys {sorted(unknown)}")
            replace(self.train, **changes)  # validates the values now, not at training time
        for side, feats in (("user", self.user_features), ("item", self.item_features)):
            ids = [f for f in feats if f.kind == "id"]
            if len(ids) != 1:
                raise FeatureConfigError(f"{side}_features needs exactly one feature of kind 'id'")
            names = [f.name for f in feats]
            if len(set(names)) != len(names):
                raise FeatureConfigError(f"{side}_features has duplicate names: {names}")
        if any(f.kind in HISTORY_KINDS for f in self.item_features):
            raise FeatureConfigError(
                "history and sequence are user features; remove them from item_features"
            )

    def with_train(self, **changes: Any) -> TrainConfig:
        """A copy with some training knobs changed (command-line overrides)."""
        kept = {k: v for k, v in changes.items() if v is not None}
        return replace(self, train=replace(self.train, **kept))

    def for_split(self, protocol: str) -> TrainConfig:
        """The config a run under ``protocol`` uses: its [train.<split>] knobs applied."""
        changes = self.split_train.get(protocol, {})
        return replace(self, train=replace(self.train, **changes), split_train={})

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "data_dir": self.data_dir,
            "user_features": [asdict(f) for f in self.user_features],
            "item_features": [asdict(f) for f in self.item_features],
            "model": self.model.to_dict(),
            "train": {**asdict(self.train), **self.split_train},
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainConfig:
        dataset = raw.get("dataset", {})
        if isinstance(dataset, str):  # the JSON form stored in artifacts
            dataset = {"name": dataset, "dir": raw.get("data_dir", "")}
        train = dict(raw.get("train", {}))
        splits = {k: train.pop(k) for k in list(train) if isinstance(train[k], dict)}
        return cls(
            dataset=dataset["name"],
            data_dir=dataset.get("dir", f"data/{dataset['name']}"),
            user_features=[FeatureDef.from_dict(f) for f in raw["user_features"]],
            item_features=[FeatureDef.from_dict(f) for f in raw["item_features"]],
            model=ModelConfig.from_dict(raw.get("model", {})),
            train=TrainSettings.from_dict(train),
            split_train=splits,
        )


def load_config(path: Path) -> TrainConfig:
    """Parse a TOML training config; errors name the file."""
    try:
        raw = tomllib.loads(Path(path).read_text())
        return TrainConfig.from_dict(raw)
    except FileNotFoundError:
        raise
    except (KeyError, TypeError, ValueError, tomllib.TOMLDecodeError) as exc:
        raise FeatureConfigError(f"{path}: {exc}") from exc
