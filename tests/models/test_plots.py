from pathlib import Path

import matplotlib.image
import pytest

from models.plots import plot_recall_curve, plot_training_curve

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_valid_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    height, width = matplotlib.image.imread(path).shape[:2]
    assert height > 0 and width > 0


def test_recall_curve_writes_png_with_one_line_per_method(tmp_path: Path) -> None:
    ks = (10, 20, 50)
    results = {
        "two-tower": {"recall@10": 0.1, "recall@20": 0.18, "recall@50": 0.33},
        "most-popular": {"recall@10": 0.05, "recall@20": 0.09, "recall@50": 0.2},
        "ease": {"recall@10": 0.12, "recall@20": 0.2, "recall@50": 0.36},
    }
    path = tmp_path / "nested" / "recall.png"
    plot_recall_curve(results, path, ks=ks, title="MovieLens-100K test")
    assert_valid_png(path)


def test_recall_curve_names_method_missing_a_k(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ease lacks"):
        plot_recall_curve({"ease": {"recall@10": 0.1}}, tmp_path / "r.png", ks=(10, 20))


def test_training_curve_writes_png_when_only_some_epochs_validated(tmp_path: Path) -> None:
    history = [
        {"epoch": 1, "loss": 4.2, "valid_recall@10": 0.05},
        {"epoch": 2, "loss": 3.9},
        {"epoch": 3, "loss": 3.7, "valid_recall@10": 0.09},
    ]
    path = tmp_path / "training.png"
    plot_training_curve(history, path)
    assert_valid_png(path)


def test_training_curve_rejects_metric_never_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="valid_ndcg@10"):
        plot_training_curve([{"epoch": 1, "loss": 1.0}], tmp_path / "t.png", metric="ndcg@10")


def test_plots_leave_no_pyplot_figures_open(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    plot_recall_curve({"m": {"recall@10": 0.1}}, tmp_path / "a.png", ks=(10,))
    plot_training_curve([{"epoch": 1, "loss": 1.0, "valid_recall@10": 0.1}], tmp_path / "b.png")
    assert plt.get_fignums() == []
