"""Training logs: a CSV of scalars per step, TensorBoard events, a PNG of the curves.

``TrainingLog(folder, columns)`` appends one CSV row per ``write(step, **scalars)`` (empty
cells for scalars not given), mirrors them to TensorBoard when ``tensorboard`` imports, and
``plot()`` draws every ``*loss`` column and every ``*wer`` column against the step. On resume,
``TrainingLog(..., resume_step=s)`` drops rows after ``s``: the resumed run writes them again.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from pathlib import Path

logger = logging.getLogger(__name__)

CSV_FILE = "log.csv"
PLOT_FILE = "curves.png"


class TrainingLog:
    """Scalars of one run; only the main process should create one."""

    def __init__(self, folder: str | Path, columns: list[str], resume_step: int | None = None):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.columns = ["step", *[c for c in columns if c != "step"]]
        self.path = self.folder / CSV_FILE
        kept = self._rows_until(resume_step) if resume_step is not None else []
        self._rewrite(kept)
        self._tb = self._tensorboard(resume_step)

    def _rows_until(self, step: int) -> list[dict]:
        if not self.path.exists():
            return []
        with self.path.open(newline="") as handle:
            return [r for r in csv.DictReader(handle) if int(r["step"]) <= step]

    def _rewrite(self, rows: list[dict]) -> None:
        tmp = self.path.with_name(f".{CSV_FILE}.tmp")
        with tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, self.columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)

    def _tensorboard(self, resume_step: int | None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional (the `train` extra)
            logger.info("tensorboard is not installed; logging to %s only", self.path)
            return None
        purge = None if resume_step is None else resume_step + 1
        return SummaryWriter(str(self.folder / "tensorboard"), purge_step=purge)

    def write(self, step: int, **scalars: float) -> None:
        """Append a row for ``step`` (and send the scalars to TensorBoard)."""
        unknown = sorted(set(scalars) - set(self.columns))
        if unknown:
            raise ValueError(f"unknown log column(s) {unknown}; declared: {self.columns}")
        with self.path.open("a", newline="") as handle:
            csv.DictWriter(handle, self.columns).writerow({"step": step, **scalars})
        if self._tb is not None:
            for name, value in scalars.items():
                self._tb.add_scalar(name, value, step)

    def read(self) -> list[dict[str, float]]:
        """The rows so far, numbers parsed, empty cells left out."""
        with self.path.open(newline="") as handle:
            return [{k: float(v) for k, v in r.items() if v != ""} for r in csv.DictReader(handle)]

    def plot(self) -> Path:
        """Write ``curves.png``: ``*loss`` columns (left), ``*wer`` columns (right) by step."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = self.read()
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
        for column in self.columns[1:]:
            points = [
                (r["step"], r[column]) for r in rows if math.isfinite(r.get(column, math.nan))
            ]
            if not points:
                continue
            if column.endswith("loss"):
                left.plot(*zip(*points), label=column)
            elif column.endswith("wer"):
                right.plot(*zip(*points), label=column, marker="o")
        left.set(xlabel="step", ylabel="loss", title="training loss")
        right.set(xlabel="step", ylabel="WER (%)", title="dev WER")
        for axis in (left, right):
            if axis.get_legend_handles_labels()[0]:
                axis.legend()
            axis.grid(alpha=0.3)
        fig.tight_layout()
        tmp = self.folder / f".{PLOT_FILE}.tmp.png"
        fig.savefig(tmp, dpi=100)
        plt.close(fig)
        os.replace(tmp, self.folder / PLOT_FILE)
        return self.folder / PLOT_FILE

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
