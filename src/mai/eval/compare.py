"""`mai eval compare`: several runs' eval.json side by side, as a table and a grouped bar chart."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mai.errors import MaiError  # noqa: E402
from mai.run import read_json  # noqa: E402


def read_eval(path: Path) -> dict:
    """eval.json of a run directory (or the file itself)."""
    file = path / "eval.json" if path.is_dir() else path
    if not file.is_file():
        raise MaiError(f"{file} does not exist; run `mai eval {path}` first")
    return read_json(file)


def labels_for(paths: list[Path]) -> list[str]:
    """Short names: each run directory's name, made unique with its parent's when two clash."""
    names = [(p if p.is_dir() else p.parent).resolve() for p in paths]
    short = [n.name for n in names]
    return [f"{n.parent.name}/{n.name}" if short.count(n.name) > 1 else n.name for n in names]


def compare(paths: list[Path], chart: Path) -> str:
    """The comparison table (text); the bar chart goes to `chart`."""
    if len(paths) < 2:
        raise MaiError("compare needs at least two runs (or eval.json files)")
    records = dict(zip(labels_for(paths), (read_eval(p) for p in paths), strict=True))
    tasks = list(dict.fromkeys(t for r in records.values() for t in r["tasks"]))
    width = max(12, *(len(label) for label in records))
    lines = ["task".ljust(16) + "".join(label.rjust(width + 2) for label in records)]
    for task in tasks:
        cells = [r["tasks"].get(task, {}).get("score") for r in records.values()]
        lines.append(task.ljust(16) + "".join(_cell(c, width) for c in cells))
    lines.append("CORE".ljust(16) + "".join(_cell(r.get("core"), width, signed=True) for r in records.values()))
    bpbs = [(r.get("bpb") or {}).get("val_bpb") for r in records.values()]
    lines.append("val bits/byte".ljust(16) + "".join(_cell(b, width) for b in bpbs))
    lines += settings_warnings(records)
    plot_comparison(records, tasks, chart)
    return "\n".join(lines) + "\n"


def settings_warnings(records: dict[str, dict]) -> list[str]:
    """A line for each setting that differs between the evaluations: their scores are not comparable."""
    warnings = []
    for setting in ("limit", "precision"):
        values = {label: r.get("settings", {}).get(setting) for label, r in records.items()}
        if len(set(values.values())) > 1:
            listed = ", ".join(f"{label} {value}" for label, value in values.items())
            warnings.append(f"warning: evaluated with different --{setting} ({listed}); scores are not comparable")
    return warnings


def plot_comparison(records: dict[str, dict], tasks: list[str], path: Path) -> None:
    """Grouped bars: each task's score per run, with the task's random baseline as a tick."""
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(tasks) + 2), 4), dpi=110)
    bar = 0.8 / len(records)
    for i, (label, record) in enumerate(records.items()):
        scores = [record["tasks"].get(t, {}).get("score", 0.0) for t in tasks]
        ax.bar([x + i * bar for x in range(len(tasks))], scores, bar, label=f"{label} (CORE {record['core']:+.3f})")
    for x, task in enumerate(tasks):
        baseline = next(r["tasks"][task]["baseline"] for r in records.values() if task in r["tasks"])
        ax.hlines(baseline, x - bar / 2, x + 0.8 - bar / 2, colors="black", linestyles="dotted")
    ax.set_xticks([x + 0.4 - bar / 2 for x in range(len(tasks))], tasks, rotation=30, ha="right")
    ax.set(title="Evaluation (dotted: random baseline)", ylabel="score", ylim=(0, 1))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _cell(value: float | None, width: int, signed: bool = False) -> str:
    if value is None:
        return "-".rjust(width + 2)
    return (f"{value:+.4f}" if signed else f"{value:.4f}").rjust(width + 2)
