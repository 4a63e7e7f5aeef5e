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
from models.features import FeatureSpec
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


def warm_start(model: TwoTower, previous: Artifact) -> dict[str, int]:
    """Copy rows for ids both vocabularies share, and dense layers whose shapes match.

    Returns the number of copied rows per embedding table.
    """
    copied: dict[str, int] = {}
    old_item_vocab = previous.item_spec.vocabs[id_feature(previous.item_spec)]
    new_item_vocab = model.item_tower.spec.vocabs[id_feature(model.item_tower.spec)]
    old_state = previous.model.state_dict()
    with torch.no_grad():
        for side in ("user_tower", "item_tower"):
            tower = getattr(model, side)
            old_spec = getattr(previous, "user_spec" if side == "user_tower" else "item_spec")
            for name, table in tower.embeddings.items():
                key = f"{side}.embeddings.{name}.weight"
                if key not in old_state or old_state[key].shape[1] != table.weight.shape[1]:
                    continue
                feature = tower.spec.get(name)
                if feature.kind == "history":
                    old_vocab, new_vocab = old_item_vocab, new_item_vocab
                elif feature.kind == "bucket":
                    n = min(len(old_state[key]), len(table.weight))
                    table.weight[:n] = old_state[key][:n]
                    copied[f"{side}.{name}"] = n
                    continue
                else:
                    old_vocab, new_vocab = old_spec.vocabs[name], tower.spec.vocabs[name]
                pairs = [(new, old_vocab[v]) for v, new in new_vocab.items() if v in old_vocab]
                if pairs:
                    new_rows, old_rows = (torch.tensor(p) for p in zip(*pairs, strict=True))
                    table.weight[new_rows] = old_state[key][old_rows]
                table.weight[0] = old_state[key][0]
                copied[f"{side}.{name}"] = len(pairs)
            for key, value in tower.mlp.state_dict().items():
                old = old_state.get(f"{side}.mlp.{key}")
                if old is not None and old.shape == value.shape:
                    value.copy_(old)
    log.info("warm start copied rows: %s", copied)
    return copied
