"""PNG plots of evaluation results and training progress.

Figures are built on the Agg canvas directly rather than through pyplot, so no global
backend or figure registry is touched and nothing needs a display.
"""

from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from models.evaluate import KS

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def plot_recall_curve(
    results: dict[str, dict[str, float]], path: Path, ks: Sequence[int] = KS, title: str = ""
) -> None:
    """One recall@K-vs-K line per method (model and baselines), written as a PNG to `path`.

    results maps a method name to its `evaluate` output, which must hold `recall@{k}`.
    """
    if not results:
        raise ValueError("results is empty; pass at least one method's evaluate() output")
    figure = Figure(figsize=(6.4, 4.4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for index, (method, metrics) in enumerate(results.items()):
        missing = [f"recall@{k}" for k in ks if f"recall@{k}" not in metrics]
        if missing:
            raise ValueError(f"{method} lacks {missing}; evaluate it with ks={tuple(ks)}")
        recalls = [metrics[f"recall@{k}"] for k in ks]
        axes.plot(ks, recalls, marker=_MARKERS[index % len(_MARKERS)], label=method)
    axes.set_xticks(list(ks))
    axes.set_xlabel("K")
    axes.set_ylabel("recall@K")
    axes.set_ylim(bottom=0.0)
    axes.grid(True, alpha=0.3)
    axes.legend()
    if title:
        axes.set_title(title)
    _save(figure, path)


def plot_training_curve(
    history: list[dict[str, float]], path: Path, metric: str = "recall@10"
) -> None:
    """Training loss (left axis) and `valid_{metric}` (right axis) per epoch, as a PNG.

    history rows look like {"epoch": 1, "loss": 4.2, "valid_recall@10": 0.1}; rows without
    the validation key (epochs not evaluated) contribute to the loss line only.
    """
    key = f"valid_{metric}"
    if not history:
        raise ValueError("history is empty; train for at least one epoch before plotting")
    if not any(key in row for row in history):
        raise ValueError(f"no history row has {key!r}; pass a metric that was validated")
    figure = Figure(figsize=(6.4, 4.4), layout="constrained")
    FigureCanvasAgg(figure)
    loss_axes = figure.add_subplot()
    epochs = [row["epoch"] for row in history]
    loss_line = loss_axes.plot(epochs, [row["loss"] for row in history], color="C0", label="loss")
    loss_axes.set_xlabel("epoch")
    loss_axes.set_ylabel("training loss", color="C0")
    loss_axes.grid(True, alpha=0.3)

    metric_axes = loss_axes.twinx()
    validated = [row for row in history if key in row]
    metric_line = metric_axes.plot(
        [row["epoch"] for row in validated],
        [row[key] for row in validated],
        color="C1",
        marker="o",
        label=key,
    )
    metric_axes.set_ylabel(key, color="C1")
    # One legend for both axes: twinx gives each axes its own handles.
    loss_axes.legend(handles=loss_line + metric_line, loc="center right")
    _save(figure, path)


def _save(figure: Figure, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=120)
