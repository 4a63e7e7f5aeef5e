"""Model artifact: a folder of safetensors weights and JSON (config, features, metrics). No pickle.

```
artifacts/NAME/
  model.safetensors   TwoTower state dict
  config.json         training config (features, model, train knobs) + format version
  features.json       fitted user and item FeatureSpecs (vocabularies, normalisers, dims)
  data.json           dataset name/dir, data fingerprint, split protocol/seed/fingerprint
  metrics.json        test metrics of the model and the baselines, per protocol
  training.json       per-epoch loss and validation metrics
```
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from models.config import TrainConfig
from models.encoding import id_feature
from models.features import HISTORY_KINDS, FeatureDef, FeatureSpec
from models.two_tower import TwoTower

log = logging.getLogger(__name__)
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"


class ArtifactInvalidError(ValueError):
    """An artifact folder that is missing files or does not match its own config."""


@dataclass
class Artifact:
    """A trained model with everything needed to encode inputs for it."""

    model: TwoTower
    config: TrainConfig
    user_spec: FeatureSpec
    item_spec: FeatureSpec
    data: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    path: Path | None = None

    @property
    def fingerprint(self) -> str:
        return str(self.data.get("artifact_fingerprint", ""))


def _write_json(path: Path, payload: Any, compact: bool = False) -> None:
    # Indenting makes json use its pure-Python encoder: minutes for a 1M-id vocabulary.
    text = json.dumps(payload, sort_keys=True, indent=None if compact else 2)
    path.write_text(text + "\n")


def save_artifact(artifact: Artifact, out: Path) -> Path:
    """Write the artifact to ``out`` atomically (temp folder, then rename over any old one)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in artifact.model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS), metadata={"format_version": str(FORMAT_VERSION)})
        _write_json(
            tmp / "config.json", {"format_version": FORMAT_VERSION, **artifact.config.to_dict()}
        )
        _write_json(
            tmp / "features.json",
            {"user": artifact.user_spec.to_json(), "item": artifact.item_spec.to_json()},
            compact=True,  # vocabularies
        )
        _write_json(tmp / "data.json", artifact.data)
        _write_json(tmp / "metrics.json", artifact.metrics)
        _write_json(tmp / "training.json", artifact.history)
        for extra in artifact.path.glob("*.png") if artifact.path else []:
            shutil.copy2(extra, tmp / extra.name)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    artifact.path = out
    return out


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ArtifactInvalidError(
            f"{path.parent}: missing {path.name}; retrain or copy it"
        ) from exc
    except json.JSONDecodeError as exc:
        raise ArtifactInvalidError(f"{path}: not valid JSON ({exc})") from exc


def load_artifact(path: Path) -> Artifact:
    """Load an artifact folder: the model comes back in eval mode, bit-identical to the saved."""
    path = Path(path)
    if not path.is_dir():
        raise ArtifactInvalidError(f"{path}: no such artifact folder; run `recall train` first")
    raw_config = _read_json(path / "config.json")
    if raw_config.get("format_version") != FORMAT_VERSION:
        raise ArtifactInvalidError(f"{path}: format_version {raw_config.get('format_version')}")
    config = TrainConfig.from_dict({k: v for k, v in raw_config.items() if k != "format_version"})
    specs = _read_json(path / "features.json")
    user_spec, item_spec = (
        FeatureSpec.from_json(specs["user"]),
        FeatureSpec.from_json(specs["item"]),
    )
    model = TwoTower(config.model, user_spec, item_spec)
    if not (path / WEIGHTS).exists():
        raise ArtifactInvalidError(f"{path}: missing {WEIGHTS}; retrain")
    state = load_file(str(path / WEIGHTS))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ArtifactInvalidError(f"{path}: weights do not match config ({exc})") from exc
    model.eval()
    return Artifact(
        model=model,
        config=config,
        user_spec=user_spec,
        item_spec=item_spec,
        data=_read_json(path / "data.json"),
        metrics=_read_json(path / "metrics.json"),
        history=_read_json(path / "training.json"),
        path=path,
    )


class WarmStartError(ValueError):
    """A previous artifact whose table cannot seed the new model's (the message names it)."""


def _row_pairs(
    side: str, feature: FeatureDef, old_spec: FeatureSpec, new_spec: FeatureSpec,
    item_vocabs: tuple[dict[str, int], dict[str, int]],
) -> tuple[list[int], list[int]]:  # fmt: skip
    """(new rows, old rows) of the values both tables hold, the unknown/padding row 0 first."""
    old_feature = old_spec.get(feature.name)
    table = f"{side}.{feature.name}"
    if old_feature.kind != feature.kind:
        raise WarmStartError(
            f"warm start: table {table} was a {old_feature.kind!r} feature and is now "
            f"{feature.kind!r}; its rows mean different things: rename the feature or train "
            "without --init-from"
        )
    if feature.kind == "bucket":
        if tuple(old_feature.boundaries) != tuple(feature.boundaries):
            raise WarmStartError(
                f"warm start: table {table} has bucket boundaries {list(feature.boundaries)}, "
                f"the previous artifact {list(old_feature.boundaries)}; its rows would be other "
                "buckets: keep the boundaries or train without --init-from"
            )
        rows = list(range(len(feature.boundaries) + 2))
        return rows, rows
    if feature.kind in HISTORY_KINDS:
        old_vocab, new_vocab = item_vocabs
    else:
        old_vocab, new_vocab = old_spec.vocabs[feature.name], new_spec.vocabs[feature.name]
    pairs = [(new, old_vocab[v]) for v, new in new_vocab.items() if v in old_vocab]
    return [0] + [new for new, _ in pairs], [0] + [old for _, old in pairs]


def _input_columns(spec: FeatureSpec) -> dict[str, range]:
    """Where each feature's part lies in the concatenated input of a tower's first layer."""
    out, at = {}, 0
    for feature in spec.features:
        width = 2 if feature.kind == "numeric" else spec.dims[feature.name]
        out[feature.name] = range(at, at + width)
        at += width
    return out


def _first_layer_columns(
    old_spec: FeatureSpec, new_spec: FeatureSpec
) -> tuple[list[int], list[int]]:
    """(new columns, old columns) of the first layer's inputs that read the same dimensions."""
    old_cols, new_cols = _input_columns(old_spec), _input_columns(new_spec)
    pairs = [
        (new_cols[name][d], old_cols[name][d])
        for name in new_cols
        if name in old_cols
        for d in range(min(len(new_cols[name]), len(old_cols[name])))
    ]
    return [new for new, _ in pairs], [old for _, old in pairs]


def warm_start(model: TwoTower, previous: Artifact) -> dict[str, int]:
    """Seed ``model`` from ``previous`` wherever both hold the same thing; returns rows copied.

    Every embedding table copies the rows of the ids (values, buckets) both vocabularies hold,
    and of those rows the dimensions both have (the first ``min(old, new)``: automatic sizes
    grow with the catalogue, and a grown table keeps what it learnt). Every linear layer
    copies the weights between inputs and outputs both models have; the first layer's inputs
    are matched feature by feature, so a feature whose table grew keeps its part of the
    layer. A table whose feature changed kind, or a bucket table whose boundaries changed,
    raises :class:`WarmStartError` naming it; a feature the previous model did not have starts
    fresh, and the log says so.
    """
    copied: dict[str, int] = {}
    item_vocabs = (
        previous.item_spec.vocabs[id_feature(previous.item_spec)],
        model.item_tower.spec.vocabs[id_feature(model.item_tower.spec)],
    )
    old_state = previous.model.state_dict()
    fresh: list[str] = []
    with torch.no_grad():
        for side in ("user_tower", "item_tower"):
            tower = getattr(model, side)
            old_spec = getattr(previous, "user_spec" if side == "user_tower" else "item_spec")
            old_names = {f.name for f in old_spec.features}
            for feature in tower.spec.features:
                if feature.name not in old_names:
                    fresh.append(f"{side}.{feature.name}")
                    continue
                if feature.kind == "numeric" or feature.name in tower.spec.one_hot:
                    continue  # one-hot: a fixed identity, nothing learnt to carry over
                if feature.name in old_spec.one_hot:
                    fresh.append(f"{side}.{feature.name}")
                    continue
                table = tower.embeddings[feature.name].weight
                old = old_state[f"{side}.embeddings.{feature.name}.weight"]
                new_rows, old_rows = _row_pairs(side, feature, old_spec, tower.spec, item_vocabs)
                dims = min(old.shape[1], table.shape[1])
                kept = [(n, o) for n, o in zip(new_rows, old_rows, strict=True)
                        if n < len(table) and o < len(old)]  # fmt: skip
                if kept:
                    rows_new, rows_old = (torch.tensor(p) for p in zip(*kept, strict=True))
                    table[rows_new, :dims] = old[rows_old, :dims]
                copied[f"{side}.{feature.name}"] = len(kept) - 1  # the unknown row is not an id
                log.info("warm start %s.%s: %d rows x %d of %d dims copied", side,
                         feature.name, len(kept) - 1, dims, table.shape[1])  # fmt: skip
            linear = [m for m in tower.mlp if isinstance(m, torch.nn.Linear)]
            old_linear = [k[: -len(".weight")] for k in old_state
                          if k.startswith(f"{side}.mlp.") and k.endswith(".weight")]  # fmt: skip
            for index, (layer, key) in enumerate(zip(linear, old_linear, strict=False)):
                weight, bias = old_state[f"{key}.weight"], old_state.get(f"{key}.bias")
                outputs = min(weight.shape[0], layer.weight.shape[0])
                if index == 0:
                    new_cols, old_cols = _first_layer_columns(old_spec, tower.spec)
                else:
                    new_cols = old_cols = list(range(min(weight.shape[1], layer.weight.shape[1])))
                layer.weight[:outputs, new_cols] = weight[:outputs, old_cols]
                if bias is not None and layer.bias is not None:
                    layer.bias[:outputs] = bias[:outputs]
    if fresh:
        log.info("warm start: %s not in the previous artifact, trained from scratch", fresh)
    log.info("warm start copied rows: %s", copied)
    return copied
