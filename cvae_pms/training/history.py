"""The training history: ``RUN/history.csv`` (one row per epoch), the loss figure
``RUN/loss.png`` and the TensorBoard scalars."""
from __future__ import annotations

import csv
from pathlib import Path

#: Columns of ``history.csv`` (and, after ``epoch``, the TensorBoard scalars).
HISTORY_COLUMNS = ("epoch", "beta", "H", "KL", "L", "val_H", "val_KL", "lr", "time_s",
                   "samples_per_s")


def write_history(path: Path, rows: list[dict]) -> None:
    """History CSV with :data:`HISTORY_COLUMNS` (atomic)."""
    import io
    from cvae_pms.atomic import write_text_atomic
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=HISTORY_COLUMNS)
    w.writeheader()
    for r in rows:
        w.writerow({k: r[k] for k in HISTORY_COLUMNS})
    write_text_atomic(path, buf.getvalue())


def read_history(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k: (int(v) if k == "epoch" else float(v)) for k, v in r.items()}
                for r in csv.DictReader(f)]


def plot_history(path: Path, rows: list[dict], annealing: dict) -> None:
    """Loss figure: H, KL, L (train) and val_H vs epoch, annealing window shaded."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from cvae_pms.atomic import write_bytes_atomic
    ep = [r["epoch"] for r in rows]
    from cvae_pms.plots import plain_text
    with plain_text():
        png = _draw_history(plt, ep, rows, annealing)
    write_bytes_atomic(path, png)


def _draw_history(plt, ep: list[int], rows: list[dict], annealing: dict) -> bytes:
    import io
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, style in (("H", "-"), ("KL", "-"), ("L", "-"), ("val_H", "--")):
        ax.plot(ep, [r[key] for r in rows], style, label=key)
    ax.axvspan(annealing["start"], annealing["end"], color="0.9", label="KL annealing")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss [nats per spectrum]")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()
