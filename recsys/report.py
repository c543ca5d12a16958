"""`recsys report`: one self-contained HTML page (plots embedded as PNG) + a Markdown table.

The page shows, for one or more run directories: a side-by-side table (test AUC, GAUC,
logloss, validation AUC, RelaImpr against the first run, training throughput, the
published figure where the config names one), ROC curves, a reliability diagram,
training and validation curves, and per-group means ± std when several seeds of the same
run name are given. Callers add their own tables (with a bar chart of chosen columns) as
:class:`ReportSection` s: the quickstart's retrieval and cascade stages.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import pyarrow.parquet as pq

from recsys.errors import CheckpointError

from .metrics import rela_impr

PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4d7c0f", "#be185d"]


@dataclass
class RunResult:
    path: Path
    name: str
    metrics: dict
    predictions: Dict[str, dict]
    curves: Dict[str, List[tuple]]

    @property
    def group(self) -> str:
        """Runs that differ only by seed share a group (name without a trailing _seedN)."""
        name = self.name
        return name.rsplit("_seed", 1)[0] if "_seed" in name else name

    def split(self, split: str) -> dict:
        return self.metrics.get("splits", {}).get(split, {})


def load_run_result(path: Path) -> RunResult:
    path = Path(path)
    metrics_path = path / "metrics.json"
    if not metrics_path.exists():
        raise FileNotFoundError(f"{path} has no metrics.json: is it a finished `recsys fit` run?")
    try:
        metrics = json.loads(metrics_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{metrics_path}: not readable JSON ({exc}); the run directory is damaged") from None
    predictions = {}
    for split in ("valid", "test"):
        p = path / "predictions" / f"{split}.parquet"
        if p.exists():
            table = pq.read_table(str(p), columns=["label", "prob"])
            predictions[split] = {"label": table.column("label").to_numpy(), "prob": table.column("prob").to_numpy()}
    return RunResult(path, metrics.get("run") or path.name, metrics, predictions, _read_curves(path / "logs" / "metrics.csv"))


def _read_curves(path: Path) -> Dict[str, List[tuple]]:
    curves: Dict[str, List[tuple]] = {}
    if not path.exists():
        return curves
    with open(path) as f:
        for row in csv.DictReader(f):
            step = int(float(row.get("step") or 0))
            for key, value in row.items():
                if key in ("step", "epoch") or value in ("", None):
                    continue
                curves.setdefault(key, []).append((step, float(value)))
    return curves


@dataclass
class ReportSection:
    """An extra titled table on the page: ``rows`` (dicts sharing their keys), a short
    ``note`` under it, and a grouped bar chart of the ``plot`` columns per row (none when empty)."""

    title: str
    rows: List[dict]
    note: str = ""
    plot: Sequence[str] = ()


def plot_bars(section: ReportSection) -> Optional[str]:
    """Grouped horizontal bars: one group per row of the section, one bar per ``plot`` column."""
    columns = [c for c in section.plot if any(isinstance(r.get(c), (int, float)) for r in section.rows)]
    if not columns or not section.rows:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = [str(next(iter(r.values()))) for r in section.rows]
    fig, ax = plt.subplots(figsize=(8.5, 0.55 * len(labels) * max(1, len(columns) / 1.5) + 1.2))
    height = 0.8 / len(columns)
    positions = np.arange(len(labels))
    for j, column in enumerate(columns):
        values = [float(r[column]) if isinstance(r.get(column), (int, float)) else np.nan for r in section.rows]
        bars = ax.barh(positions + j * height, values, height=height, color=PALETTE[j % len(PALETTE)], label=column)
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=2)
    ax.set_yticks(positions + height * (len(columns) - 1) / 2, labels)
    ax.invert_yaxis()
    _style(ax, section.title, "", "")
    ax.legend(fontsize=8, frameon=False, loc="lower right")
    return _png(fig)


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _style(ax, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=12, loc="left", fontweight="bold", color="#111827")
    ax.set_xlabel(xlabel, color="#374151")
    ax.set_ylabel(ylabel, color="#374151")
    ax.grid(True, color="#e5e7eb", linewidth=0.8)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def plot_roc(runs: Sequence[RunResult], split: str = "test") -> Optional[str]:
    from sklearn.metrics import roc_curve
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    drawn = False
    for i, run in enumerate(runs):
        pred = run.predictions.get(split)
        if pred is None or len(np.unique(pred["label"])) < 2:
            continue
        fpr, tpr, _ = roc_curve(pred["label"], pred["prob"])
        ax.plot(fpr, tpr, color=PALETTE[i % len(PALETTE)], lw=2,
                label=f"{run.name} (AUC {run.split(split).get('auc', float('nan')):.4f})")
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.plot([0, 1], [0, 1], color="#9ca3af", lw=1, ls="--")
    _style(ax, f"ROC, {split} split", "false positive rate", "true positive rate")
    ax.legend(loc="lower right", fontsize=8, frameon=False)
    return _png(fig)


def plot_calibration(runs: Sequence[RunResult], split: str = "test", bins: int = 10) -> Optional[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    drawn = False
    for i, run in enumerate(runs):
        pred = run.predictions.get(split)
        if pred is None or not len(pred["prob"]):
            continue
        edges = np.linspace(0, 1, bins + 1)
        which = np.clip(np.digitize(pred["prob"], edges) - 1, 0, bins - 1)
        count = np.bincount(which, minlength=bins)
        mean_p = np.bincount(which, weights=pred["prob"], minlength=bins) / np.maximum(count, 1)
        rate = np.bincount(which, weights=pred["label"], minlength=bins) / np.maximum(count, 1)
        keep = count > 0
        ax.plot(mean_p[keep], rate[keep], marker="o", ms=4, lw=1.8, color=PALETTE[i % len(PALETTE)], label=run.name)
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.plot([0, 1], [0, 1], color="#9ca3af", lw=1, ls="--", label="perfect calibration")
    _style(ax, f"Reliability, {split} split", "mean predicted probability", "observed click rate")
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    return _png(fig)


def plot_curves(runs: Sequence[RunResult]) -> Optional[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10.5, 4.2))
    drawn = False
    for i, run in enumerate(runs):
        color = PALETTE[i % len(PALETTE)]
        loss = run.curves.get("train/loss", [])
        if loss:
            steps, values = zip(*loss)
            window = max(1, len(values) // 50)
            smooth = np.convolve(values, np.ones(window) / window, mode="valid")
            ax1.plot(steps[window - 1:], smooth, color=color, lw=1.6, label=run.name)
            drawn = True
        metric = "valid/auc" if run.curves.get("valid/auc") else "valid/recall@20"   # ranking | retrieval
        if run.curves.get(metric):
            steps, values = zip(*run.curves[metric])
            ax2.plot(steps, values, color=color, marker="o", lw=1.8, label=f"{run.name} ({metric[6:]})")
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    _style(ax1, "Training loss", "step", "loss (smoothed)")
    _style(ax2, "Validation AUC (ranking) / Recall@20 (retrieval)", "step", "metric")
    for ax in (ax1, ax2):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, frameon=False)
    return _png(fig)


def _fmt(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.{digits}f}"
    return str(value)


RETRIEVAL_COLUMNS = {"test Recall@20": "recall@20", "test NDCG@20": "ndcg@20", "valid Recall@20": "recall@20"}


def table_rows(runs: Sequence[RunResult]) -> List[dict]:
    """One row per run; full-ranking Recall/NDCG@20 columns appear when a retrieval run is
    among them (ranking runs show – there, as retrieval runs do under AUC)."""
    base_auc = runs[0].split("test").get("auc") if runs else None
    with_retrieval = any(run.metrics.get("family") == "retrieval" for run in runs)
    rows = []
    for run in runs:
        test, valid = run.split("test"), run.split("valid")
        published = run.metrics.get("published") or {}
        retrieval = {column: (valid if column.startswith("valid") else test).get(key)
                     for column, key in RETRIEVAL_COLUMNS.items()} if with_retrieval else {}
        rows.append({
            "run": run.name, "model": run.metrics.get("model", "").rsplit(".", 1)[-1],
            "protocol": run.metrics.get("protocol", ""), "seed": run.metrics.get("seed", ""),
            "test AUC": test.get("auc"), "test GAUC": test.get("gauc"), "test logloss": test.get("logloss"),
            "valid AUC": valid.get("auc"), **retrieval,
            "RelaImpr vs first": _rela_impr_cell(test.get("auc"), base_auc),
            "train samples/s": run.metrics.get("train_samples_per_second"),
            "test samples": test.get("samples"), "test users": test.get("users"),
            "published": (f"{published.get('metric', '').upper()} {published.get('value')} ({published.get('source', '')})"
                          if published.get("value") is not None else ""),
        })
    return rows


def _rela_impr_cell(auc, base_auc) -> str:
    """RelaImpr measures the lift over random guessing (AUC 0.5) relative to the base's
    lift, so it is defined only when the base beats random: below 0.5 the ratio flips sign
    (a model that beat its base would read as -4440%)."""
    if auc is None or base_auc is None:
        return "–"
    if base_auc <= 0.5:
        return f"undefined (base AUC {base_auc:.4f} ≤ 0.5)"
    return f"{rela_impr(auc, base_auc):+.2f}%"


def missing_plots(runs: Sequence[RunResult], split: str = "test") -> List[str]:
    """One sentence per run and plot that cannot be drawn, with the reason."""
    notes = []
    for run in runs:
        pred = run.predictions.get(split)
        if pred is None:
            why = ("its model family writes no per-sample scores" if run.metrics.get("family") == "retrieval"
                   else f"it has no predictions/{split}.parquet (the run was not evaluated on {split}, "
                   "or the file was removed)")
            notes.append(f"{run.name}: no ROC curve or calibration diagram: {why}")
        elif len(np.unique(pred["label"])) < 2:
            notes.append(f"{run.name}: no ROC curve: its {split} labels are all one class")
        if not run.curves.get("train/loss") and not run.curves.get("valid/auc") \
                and not run.curves.get("valid/recall@20"):
            notes.append(f"{run.name}: no training curves: logs/metrics.csv is missing or empty")
    return notes


def group_rows(runs: Sequence[RunResult]) -> List[dict]:
    groups: Dict[str, List[RunResult]] = {}
    for run in runs:
        groups.setdefault(run.group, []).append(run)
    rows = []
    for name, members in groups.items():
        row = {"group": name, "runs": len(members)}
        for key in ("auc", "gauc", "logloss"):
            values = np.array([m.split("test").get(key, np.nan) for m in members], dtype=float)
            row[f"test {key.upper() if key != 'logloss' else key}"] = (
                # sample std (ddof = 1), as in bench/real_data_results.py
                f"{np.nanmean(values):.4f} ± {np.nanstd(values, ddof=1) if np.isfinite(values).sum() > 1 else 0.0:.4f}"
                if np.isfinite(values).any() else "–")
        rows.append(row)
    return rows


def markdown_table(rows: List[dict]) -> str:
    if not rows:
        return ""
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "|".join("---" for _ in keys) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row[k]) if not isinstance(row[k], str) else row[k] for k in keys) + " |")
    return "\n".join(lines)


def _html_table(rows: List[dict], best_keys=("test AUC", "test GAUC", "test Recall@20", "test NDCG@20")) -> str:
    if not rows:
        return "<p>No runs.</p>"
    keys = list(rows[0])
    best = {k: max((r[k] for r in rows if isinstance(r.get(k), float)), default=None) for k in best_keys}
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    body = []
    for row in rows:
        cells = []
        for k in keys:
            v = row[k]
            text = html.escape(_fmt(v) if not isinstance(v, str) else v)
            cls = ' class="best"' if k in best and v is not None and v == best[k] and len(rows) > 1 else ""
            cells.append(f"<td{cls}>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div style="overflow-x:auto"><table><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


CSS = """
body{font-family:-apple-system,Segoe UI,Roboto,Helvetica,Arial,sans-serif;margin:0;background:#f8fafc;color:#111827}
header{background:linear-gradient(90deg,#1e3a8a,#2563eb);color:white;padding:28px 40px}
header h1{margin:0;font-size:26px} header p{margin:6px 0 0;opacity:.85}
main{max-width:1150px;margin:24px auto;padding:0 24px}
section{background:white;border-radius:12px;box-shadow:0 1px 3px rgba(0,0,0,.08);padding:20px 24px;margin-bottom:22px}
h2{font-size:18px;margin:0 0 14px;color:#1e3a8a}
table{border-collapse:collapse;width:100%;font-size:13px}
th{background:#eff6ff;text-align:left;padding:8px;border-bottom:2px solid #bfdbfe;white-space:nowrap}
td{padding:7px 8px;border-bottom:1px solid #e5e7eb;font-variant-numeric:tabular-nums}
td.best{font-weight:700;color:#166534;background:#f0fdf4}
.grid{display:flex;flex-wrap:wrap;gap:18px}.grid img{max-width:100%;border-radius:8px}
.cards{display:flex;gap:14px;flex-wrap:wrap}.card{flex:1;min-width:180px;background:#eff6ff;border-radius:10px;padding:14px}
.card .v{font-size:24px;font-weight:700;color:#1e3a8a}.card .k{font-size:12px;color:#475569}
footer{text-align:center;color:#94a3b8;font-size:12px;margin:30px 0}
"""


def _section_html(section: ReportSection) -> str:
    bars = plot_bars(section)
    image = f'<img src="data:image/png;base64,{bars}" alt="{html.escape(section.title)}">' if bars else ""
    note = f'<p style="font-size:12px;color:#64748b">{html.escape(section.note)}</p>' if section.note else ""
    return f"<section><h2>{html.escape(section.title)}</h2>{_html_table(section.rows, ())}{note}{image}</section>"


def write_report(run_dirs: Sequence[Path], out_dir: Path, title: str = "recsys report",
                 sections: Sequence[ReportSection] = ()) -> Path:
    runs = [load_run_result(Path(p)) for p in run_dirs]
    if not runs:
        raise ValueError("no runs given")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = table_rows(runs)
    groups = group_rows(runs)
    key, label = ("auc", "AUC") if any(r.split("test").get("auc") is not None for r in runs) else \
        ("recall@20", "Recall@20")                                  # only retrieval runs
    best = max(runs, key=lambda r: r.split("test").get(key) or 0)
    cards = "".join(
        f'<div class="card"><div class="v">{html.escape(v)}</div><div class="k">{html.escape(k)}</div></div>'
        for k, v in [(f"best test {label}", f"{best.split('test').get(key, float('nan')):.4f} · {best.name}"),
                     ("runs", str(len(runs))),
                     ("protocol", str(runs[0].metrics.get("protocol", ""))),
                     ("test samples", str(runs[0].split("test").get("samples", runs[0].split("test").get("users", "–"))))])
    figures = [plot_roc(runs), plot_calibration(runs), plot_curves(runs)]
    images = "".join(f'<img src="data:image/png;base64,{img}" alt="plot">' for img in figures if img)
    missing = missing_plots(runs)
    if missing:
        images += ('<p style="font-size:13px;color:#b45309">Not drawn:</p><ul style="font-size:13px;color:#b45309">'
                   + "".join(f"<li>{html.escape(m)}</li>" for m in missing) + "</ul>")
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{CSS}</style></head><body>
<header><h1>{html.escape(title)}</h1><p>{len(runs)} run(s): {html.escape(', '.join(r.name for r in runs))}</p></header>
<main>
<section><div class="cards">{cards}</div></section>
<section><h2>Runs side by side</h2>{_html_table(rows)}
<p style="font-size:12px;color:#64748b">Model selection uses the validation split; test numbers are reported once per run.
RelaImpr = ((AUC − 0.5)/(AUC<sub>first run</sub> − 0.5) − 1) × 100%.</p></section>
{f'<section><h2>Mean ± std over seeds</h2>{_html_table(groups, ())}</section>' if any(g["runs"] > 1 for g in groups) else ''}
<section><h2>Plots</h2><div class="grid">{images}</div></section>
{"".join(_section_html(section) for section in sections)}
</main><footer>generated by recsys report</footer></body></html>"""
    html_path = out_dir / "report.html"
    html_path.write_text(page)
    md = f"# {title}\n\n{markdown_table(rows)}\n"
    if missing:
        md += "\nPlots not drawn:\n\n" + "".join(f"- {m}\n" for m in missing)
    if any(g["runs"] > 1 for g in groups):
        md += f"\n## Mean ± std over seeds\n\n{markdown_table(groups)}\n"
    for section in sections:
        md += f"\n## {section.title}\n\n{markdown_table(section.rows)}\n" + (f"\n{section.note}\n" if section.note else "")
    (out_dir / "report.md").write_text(md)
    return html_path
