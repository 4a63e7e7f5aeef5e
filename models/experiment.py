"""One training run end to end: data -> split -> features -> train -> evaluate -> artifact."""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models import distributed
from models.artifact import Artifact, load_artifact, save_artifact, warm_start
from models.config import TrainConfig
from models.data import RawDataset, Split, load_dataset, make_split
from models.encoding import EncodedData, Histories, encode_dataset, fit_specs, id_feature
from models.features import HISTORY_KINDS, UNKNOWN, FeatureSpec
from models.inputs import Inputs
from models.plots import plot_recall_curve, plot_training_curve
from models.scoreboard import Scoreboard, interactions, model_metrics
from models.train import train_model
from models.two_tower import TwoTower

log = logging.getLogger(__name__)
# Protocols whose test targets come after everything the model may know about the user. Under
# random-811 the test items are scattered in time, so any evaluation-time history would hold items
# after some test target, which the history feature's definition forbids: it is left out there.
TEMPORAL_PROTOCOLS = ("leave-last-out", "cold-users")
TABLE_METRICS = (
    "recall@10",
    "recall@20",
    "recall@50",
    "recall@100",
    "ndcg@10",
    "hr@10",
    "hr@50",
    "mrr@10",
    "coverage@50",
)


def profile_only(inputs: Inputs, user_spec: FeatureSpec) -> Inputs:
    """``inputs`` as a held-out user has them: every user id unknown and no history."""
    name = id_feature(user_spec)
    features = dict(inputs.data.user_features)
    features[name] = np.full_like(features[name], UNKNOWN)
    data = replace(inputs.data, user_features=features)
    nothing = Histories.build(data, np.empty(0, dtype=np.int64))
    return Inputs(data, nothing, inputs.user_spec, inputs.item_spec, inputs.device)


@dataclass
class Fitted:
    """Specs, encoded data, model and inputs fitted on one set of training rows."""

    user_spec: FeatureSpec
    item_spec: FeatureSpec
    data: EncodedData
    model: TwoTower
    inputs: Inputs


def fit_on(
    config: TrainConfig, dataset: RawDataset, split: Split, rows: np.ndarray, init_from: Path | None
) -> Fitted:
    """Fit vocabularies on ``rows`` and build a fresh (or warm-started) model for them."""
    torch.manual_seed(config.train.seed)
    device = config.train.torch_device()
    user_spec, item_spec = fit_specs(config, dataset, replace(split, train=rows))
    data = encode_dataset(dataset, user_spec, item_spec)
    model = TwoTower(config.model, user_spec, item_spec)
    if init_from is not None:
        warm_start(model, load_artifact(init_from))
    inputs = Inputs(data, Histories.build(data, rows), user_spec, item_spec, device)
    return Fitted(user_spec, item_spec, data, model, inputs)


def run_training(
    config: TrainConfig,
    protocol: str,
    out: Path,
    data_dir: Path | None = None,
    init_from: Path | None = None,
    progress: bool = True,
) -> Artifact:
    """Train on ``protocol``'s split, evaluate on its test part with baselines, save the artifact.

    Early stopping on the validation part picks the number of epochs; with ``refit`` (the
    default) the model is then trained again from the same seed on train + valid for that
    many epochs, so that it sees what the baselines see when scoring the test part. Under
    ``cold-users`` the validation users are scored as the held-out ones will be, from their
    profile alone (``profile_only``): the id-based score keeps improving for many epochs after
    the profile path has peaked (measured on ml-100k: epoch 2 against 10 and more).
    """
    config = config.for_split(protocol)  # a no-op when the caller has applied it
    if protocol not in TEMPORAL_PROTOCOLS and any(
        f.kind in HISTORY_KINDS for f in config.user_features
    ):
        log.info("protocol %s is not time-ordered: the history feature is left out", protocol)
        config = replace(
            config, user_features=[f for f in config.user_features if f.kind not in HISTORY_KINDS]
        )
    settings = config.train
    if settings.threads:
        torch.set_num_threads(settings.threads)
    data_dir = Path(data_dir or config.data_dir)
    dataset = load_dataset(data_dir, config.dataset)
    split = make_split(dataset.interactions, protocol, settings.seed)
    fitted = fit_on(config, dataset, split, split.train, init_from)
    train_m, valid_m = (interactions(fitted.data, r) for r in (split.train, split.valid))

    valid_inputs = fitted.inputs
    if protocol == "cold-users":
        valid_inputs = profile_only(fitted.inputs, fitted.user_spec)

    def validate(m: TwoTower) -> dict[str, float]:
        return model_metrics(m, valid_inputs, valid_m, train_m, settings.eval_users, settings.seed)

    started = time.perf_counter()
    result = train_model(fitted.model, fitted.inputs, settings, validate, progress=progress)
    model = result.model
    seconds = {"search": time.perf_counter() - started}
    known = np.concatenate([split.train, split.valid])
    if settings.refit and len(split.valid):
        fitted = fit_on(config, dataset, split, known, init_from)
        refit = replace(settings, epochs=result.best_epoch)
        started = time.perf_counter()
        model = train_model(fitted.model, fitted.inputs, refit, None, progress=progress).model
        seconds["refit"] = time.perf_counter() - started
    info = data_info(config, dataset.fingerprint, split, data_dir)
    if not distributed.is_leader():  # under torchrun, rank 0 evaluates and writes the artifact
        return Artifact(model, config, fitted.user_spec, fitted.item_spec, info, {}, result.history)
    started = time.perf_counter()
    known_m, test_m = (interactions(fitted.data, r) for r in (known, split.test))
    fit_m = known_m if settings.refit else interactions(fitted.data, split.train)
    board = Scoreboard(fitted.data, split, known, fit_m, test_m, settings.eval_users, settings.seed)
    results = board.results(model, fitted.inputs.device)
    seconds["evaluation"] = time.perf_counter() - started
    metrics: dict[str, Any] = {
        "protocol": protocol,
        "seed": settings.seed,
        "loss": settings.loss,
        "best_epoch": result.best_epoch,
        "refit": bool(settings.refit and len(split.valid)),
        "valid": {settings.metric: result.best_metric},
        "test": results,
        "skipped_baselines": board.skipped,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }
    with tempfile.TemporaryDirectory() as tmp:
        plots = Path(tmp)
        plot_recall_curve(results, plots / "recall_at_k.png", title=f"{config.dataset} {protocol}")
        plot_training_curve(result.history, plots / "training_curve.png", metric=settings.metric)
        artifact = Artifact(
            model,
            config,
            fitted.user_spec,
            fitted.item_spec,
            info,
            metrics,
            result.history,
            plots,
        )
        save_artifact(artifact, out)
    return artifact


def data_info(config: TrainConfig, data_fp: str, split: Split, data_dir: Path) -> dict[str, Any]:
    """What the artifact was trained on, and a fingerprint that names the whole run."""
    info = {
        "dataset": config.dataset,
        "data_dir": str(data_dir),
        "data_fingerprint": data_fp,
        "split": {
            "protocol": split.protocol,
            "seed": split.seed,
            "fingerprint": split.fingerprint(),
        },
    }
    blob = json.dumps([info, config.to_dict()], sort_keys=True).encode()
    info["artifact_fingerprint"] = hashlib.sha256(blob).hexdigest()[:16]
    return info


def format_table(
    rows: dict[str, dict[str, float]], metrics: tuple[str, ...] = TABLE_METRICS
) -> str:
    """A plain-text table: one row per method, one column per metric, then the users scored
    (``n of N`` when a sample of them was)."""
    width = max(len(name) for name in rows) + 2
    head = "method".ljust(width) + "".join(m.rjust(12) for m in metrics)
    sampled = any(v.get("users", 0) < v.get("users_total", 0) for v in rows.values())
    if any("users" in v for v in rows.values()):
        head += "users".rjust(18 if sampled else 8)
    lines = [head, "-" * len(head)]
    for name, values in rows.items():
        cells = "".join((f"{values[m]:.4f}" if m in values else "-").rjust(12) for m in metrics)
        if "users" in values:
            users = f"{values['users']:.0f}"
            if sampled:
                users += f" of {values.get('users_total', values['users']):.0f}"
            cells += users.rjust(18 if sampled else 8)
        lines.append(name.ljust(width) + cells)
    return "\n".join(lines)
