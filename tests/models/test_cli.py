"""The `recall` command line: its commands, `recall train` and `recall data synth`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recall.cli import main

from .conftest import ML100K_CONFIG

RECALL = Path(sys.executable).parent / "recall"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(RECALL), *args], capture_output=True, text=True, timeout=60)


def test_help_lists_every_program_command() -> None:
    done = run("--help")
    assert done.returncode == 0
    listed = re.findall(r"^ {4}(\S+)", done.stdout, flags=re.MULTILINE)
    assert listed == ["data", "train", "build-index", "snapshot", "serve"]


def test_data_synth_writes_the_three_atomic_files_with_the_asked_counts(tmp_path: Path) -> None:
    out = tmp_path / "syn"
    done = run(
        "data",
        "synth",
        "--users",
        "5",
        "--items",
        "7",
        "--interactions",
        "20",
        "--seed",
        "3",
        "--out",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    assert f"synthetic dataset written to {out}" in done.stdout
    lines = {p.suffix: p.read_text().splitlines() for p in out.iterdir()}
    assert {suffix: len(rows) for suffix, rows in lines.items()} == {
        ".user": 1 + 5,
        ".item": 1 + 7,
        ".inter": 1 + 20,
    }


def tiny_toml(tmp_path: Path, data_dir: Path) -> Path:
    """configs/ml-100k.toml's dataset and features with a tiny [model] and [train]."""
    text = ML100K_CONFIG.read_text()
    text = re.sub(r'^name = "ml-100k"$', f'name = "{data_dir.name}"', text, count=1, flags=re.M)
    text = text[: text.index("[model]")] + "[model]\nhidden = [16]\ndim = 8\n\n[train]\n"
    path = tmp_path / "tiny.toml"
    path.write_text(text + "batch_size = 64\n")
    return path


def train_tiny(tmp_path: Path, data_dir: Path, *flags: str) -> Path:
    """``recall train`` on the tiny dataset for one epoch; the artifact folder."""
    out = tmp_path / "artifact"
    config = tiny_toml(tmp_path, data_dir)
    code = main([
        "train", "--config", str(config), "--data-dir", str(data_dir), "--out", str(out),
        "--epochs", "1", "--no-progress", *flags,
    ])  # fmt: skip
    assert code == 0
    return out


def test_train_prints_the_metrics_table_and_writes_the_artifact(
    tmp_path: Path, tiny_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = train_tiny(tmp_path, tiny_data_dir, "--loss", "pointwise", "--seed", "4")
    printed = capsys.readouterr().out.splitlines()
    assert "tiny leave-last-out loss=pointwise seed=4" in printed
    header = printed.index(next(line for line in printed if line.startswith("method")))
    assert printed[header].split()[:3] == ["method", "recall@10", "recall@20"]
    metrics = json.loads((out / "metrics.json").read_text())
    for method in ("two-tower", "most-popular", "itemknn", "ease"):
        row = next(line for line in printed[header + 2 :] if line.split()[0] == method)
        assert float(row.split()[1]) == pytest.approx(
            metrics["test"][method]["recall@10"], abs=5e-5
        )
    assert printed[-1] == f"artifact: {out}"
    assert (metrics["loss"], metrics["seed"]) == ("pointwise", 4)
    assert json.loads((out / "config.json").read_text())["train"]["teacher"] == "none"


def test_train_takes_the_teacher_from_the_command_line(tmp_path: Path, tiny_data_dir: Path) -> None:
    out = train_tiny(tmp_path, tiny_data_dir, "--teacher", "ease")
    assert json.loads((out / "config.json").read_text())["train"]["teacher"] == "ease"


def test_train_rejects_an_unknown_loss_before_doing_any_work(tmp_path: Path) -> None:
    done = run(
        "train", "--config", str(ML100K_CONFIG), "--out", str(tmp_path / "a"), "--loss", "softmax"
    )
    assert done.returncode == 2
    assert "invalid choice: 'softmax'" in done.stderr
    assert not (tmp_path / "a").exists()


def test_train_scores_a_user_sample_and_prints_its_size(
    tmp_path: Path, tiny_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = train_tiny(tmp_path, tiny_data_dir, "--eval-users", "10", "--device", "cpu")
    saved = json.loads((out / "config.json").read_text())["train"]
    assert (saved["eval_users"], saved["device"]) == (10, "cpu")
    test = json.loads((out / "metrics.json").read_text())["test"]
    assert all(m["users"] == 10 < m["users_total"] for m in test.values())
    printed = capsys.readouterr().out
    assert f"10 of {test['two-tower']['users_total']:.0f}" in printed


def test_train_refuses_cuda_without_a_gpu(tmp_path: Path, tiny_data_dir: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    config = tiny_toml(tmp_path, tiny_data_dir)
    done = run("train", "--config", str(config), "--data-dir", str(tiny_data_dir),
               "--out", str(tmp_path / "a"), "--device", "cuda")  # fmt: skip
    assert done.returncode == 2
    assert "device = 'cuda' but torch sees no GPU" in done.stderr
    assert not (tmp_path / "a").exists()
