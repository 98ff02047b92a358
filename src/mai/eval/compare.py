"""`mai eval compare`: several runs' eval.json side by side, as a table and a grouped bar chart."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mai.errors import MaiError  # noqa: E402
from mai.eval.record import eval_file, read_eval  # noqa: E402
from mai.run_files import EvalRecord  # noqa: E402

CHART_FORMATS = (".png", ".svg", ".pdf")


def compare(paths: list[Path], chart: Path) -> str:
    """The comparison table (text); the bar chart goes to `chart`."""
    if len(paths) < 2:
        raise MaiError("compare needs at least two runs (or eval.json files)")
    check_chart(chart)
    files = [eval_file(p) for p in paths]
    sources = [f.resolve().parent if f.name == "eval.json" else f.resolve() for f in files]
    for i, source in enumerate(sources):
        if source in sources[:i]:
            first = paths[sources.index(source)]
            raise MaiError(f"{first} and {paths[i]} are the same evaluation; give each run once")
    records = dict(zip(labels_for(sources), (read_eval(f) for f in files), strict=True))
    tasks = list(dict.fromkeys(t for r in records.values() for t in r.tasks))
    width = max(12, *(len(label) for label in records))
    lines = ["task".ljust(16) + "".join(label.rjust(width + 2) for label in records)]
    for task in tasks:
        cells = [r.tasks[task].score if task in r.tasks else None for r in records.values()]
        lines.append(task.ljust(16) + "".join(_cell(c, width) for c in cells))
    lines.append("CORE".ljust(16) + "".join(_cell(r.core, width, signed=True) for r in records.values()))
    bpbs = [r.bpb.val_bpb if r.bpb else None for r in records.values()]
    lines.append("val bits/byte".ljust(16) + "".join(_cell(b, width) for b in bpbs))
    lines += settings_warnings(records)
    plot_comparison(records, tasks, chart)
    return "\n".join(lines) + "\n"


def check_chart(chart: Path) -> None:
    """Refuse a --chart path matplotlib could not write, before any eval.json is read."""
    if chart.is_dir():
        raise MaiError(f"--chart {chart} is a directory; name a file such as {chart / 'eval_compare.png'}")
    if chart.suffix.lower() not in CHART_FORMATS:
        raise MaiError(f"--chart must end in {', '.join(CHART_FORMATS)}, not {chart.name!r}", parameter="chart")
    if not chart.parent.is_dir():
        raise MaiError(f"folder {chart.parent} does not exist; create it or choose another --chart", parameter="chart")


def labels_for(sources: list[Path]) -> list[str]:
    """Each run's shortest path suffix that no other run's path ends with (two runs named `r` get `a/r`, `b/r`)."""
    labels = []
    for source in sources:
        others = [s for s in sources if s != source]
        k = next(k for k in range(1, len(source.parts) + 1) if all(s.parts[-k:] != source.parts[-k:] for s in others))
        labels.append(str(Path(*source.parts[-k:])))
    return labels


def settings_warnings(records: dict[str, EvalRecord]) -> list[str]:
    """A line for each setting that differs between the evaluations: their scores are not comparable."""
    warnings = []
    for setting in ("limit", "precision"):
        values = {label: getattr(r.settings, setting) for label, r in records.items()}
        if len(set(values.values())) > 1:
            listed = ", ".join(f"{label} {value}" for label, value in values.items())
            warnings.append(f"warning: evaluated with different --{setting} ({listed}); scores are not comparable")
    return warnings


def plot_comparison(records: dict[str, EvalRecord], tasks: list[str], path: Path) -> None:
    """Grouped bars: each task's score per run, with the task's random baseline as a tick."""
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(tasks) + 2), 4), dpi=110)
    bar = 0.8 / len(records)
    for i, (label, record) in enumerate(records.items()):
        scores = [record.tasks[t].score if t in record.tasks else 0.0 for t in tasks]
        core = "" if record.core is None else f" (CORE {record.core:+z.3f})"
        ax.bar([x + i * bar for x in range(len(tasks))], scores, bar, label=label + core)
    for x, task in enumerate(tasks):
        baseline = next(r.tasks[task].baseline for r in records.values() if task in r.tasks)
        ax.hlines(baseline, x - bar / 2, x + 0.8 - bar / 2, colors="black", linestyles="dotted")
    ax.set_xticks([x + 0.4 - bar / 2 for x in range(len(tasks))], tasks, rotation=30, ha="right")
    ax.set(title="Evaluation (dotted: chance)", ylabel="score", ylim=(0, 1))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        fig.savefig(path)
    except OSError as e:
        raise MaiError(f"cannot write --chart {path}: {e.strerror}") from None
    finally:
        plt.close(fig)


def _cell(value: float | None, width: int, signed: bool = False) -> str:
    if value is None:
        return "-".rjust(width + 2)
    return (f"{value:+z.4f}" if signed else f"{value:.4f}").rjust(width + 2)
