"""report.md and PNG plots, rendered only from what the stages wrote into the run directory, and the
data pipeline's step table (`mai data prepare`, `mai data stats`)."""

from mai.config import config_to_toml
from mai.run import RunDir, atomic_write_text, read_json, read_metrics
from mai.run_files import EvalRecord, Manifest, MetricsRecord, PipelineStep, Samples, SftRecord

PLOTS = {  # file → (title, y label, metric keys)
    "loss.png": ("Loss", "nats / token", ("loss", "val_loss")),
    "lr.png": ("Learning rate", "lr", ("lr",)),
    "throughput.png": ("Throughput", "tokens / s", ("tokens_per_s",)),
}


def write_report(run: RunDir) -> str:
    config = run.read_config()
    metrics = read_metrics(run)
    sections = [f"# Run report: {run.path.name}", _summary(metrics)]
    if run.manifest_path.is_file():
        manifest = run.read_manifest()
        plot_data_steps(manifest.steps, run.path / "data_steps.png")
        sections.append(_data_section(manifest))
    if any(m.loss is not None for m in metrics):  # no empty plots before the first training step
        for name, (title, ylabel, keys) in PLOTS.items():
            plot_metrics(metrics, keys, title, ylabel, run.path / name)
        sections.append("## Training\n\n" + "\n".join(f"![{t}]({name})" for name, (t, _, _) in PLOTS.items()))
    if run.samples_path.is_file():
        sections.append(_samples_section(read_json(run.samples_path, Samples)))
    if run.eval_path.is_file():
        evaluation = read_json(run.eval_path, EvalRecord)
        plot_eval(evaluation, run.path / "eval.png")
        sections.append(_eval_section(evaluation))
    for path, where in ((run.sft_path, None), (RunDir(run.sft_dir).sft_path, "sft")):
        if path.is_file():  # a fine-tuned run, or a run whose model was fine-tuned into its sft/ folder
            sections.append(_sft_section(read_json(path, SftRecord), where))
    sections.append(f"## Config\n\n```toml\n{config_to_toml(config)}```")
    text = "\n\n".join(sections) + "\n"
    atomic_write_text(run.report_path, text)
    return text


def pyplot():
    """matplotlib's pyplot, drawing to files (imported here: `mai data stats` needs none of it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_metrics(metrics: list[MetricsRecord], keys: tuple[str, ...], title: str, ylabel: str, path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    for key in keys:
        points = [(m.step, getattr(m, key)) for m in metrics if getattr(m, key) is not None]
        if points:
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, marker="o" if key.startswith("val") else None, markersize=3, label=key)
    ax.set(title=title, xlabel="step", ylabel=ylabel)
    ax.grid(alpha=0.3)
    if len(keys) > 1:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_data_steps(rows: list[PipelineStep], path) -> None:
    """Documents left after each pipeline step."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(rows) + 1.2), dpi=110)
    labels = [r.step.encode("ascii", "ignore").decode().strip() for r in rows]  # emoji lack a font here
    ax.barh(range(len(rows)), [r.documents_out for r in rows], color="tab:blue")
    ax.set_yticks(range(len(rows)), labels)
    ax.invert_yaxis()
    ax.set(title="Documents kept after each data pipeline step", xlabel="documents")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_eval(evaluation: EvalRecord, path) -> None:
    """Each task's score beside its random baseline (what the CORE aggregate centres on)."""
    plt = pyplot()
    names = list(evaluation.tasks)
    fig, ax = plt.subplots(figsize=(max(6, 0.55 * len(names) + 2), 3.5), dpi=110)
    ax.bar(names, [t.score for t in evaluation.tasks.values()], color="tab:blue", label="score")
    ax.scatter(names, [t.baseline for t in evaluation.tasks.values()], color="black", marker="_", s=400, label="chance")
    core = "" if evaluation.core is None else f" (CORE {evaluation.core:+z.3f})"
    ax.set(title=f"Evaluation{core}", ylabel="score", ylim=(0, 1))
    ax.tick_params(axis="x", labelrotation=40)
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _summary(metrics: list[MetricsRecord]) -> str:
    evals = [m for m in metrics if m.val_bpb is not None]
    if not evals:
        return "## Summary\n\nNo training metrics yet."
    first, last = evals[0], evals[-1]
    if len(evals) == 1:
        return f"## Summary\n\nNot trained yet: validation bits per byte {first.val_bpb:.4f} at step {first.step}."
    change = 100 * (last.val_bpb - first.val_bpb) / first.val_bpb
    train = [m for m in metrics if m.loss is not None]
    rows = [
        "| | step | val loss | val bits/byte |",
        "|---|---:|---:|---:|",
        f"| first | {first.step} | {first.val_loss:.4f} | {first.val_bpb:.4f} |",
        f"| final | {last.step} | {last.val_loss:.4f} | {last.val_bpb:.4f} |",
    ]
    lines = ["## Summary", "", *rows, "", f"Validation bits per byte changed by {change:+z.1f}%."]
    if train:
        speed = sorted(m.tokens_per_s for m in train)[len(train) // 2]
        lines.append(f"Median throughput {speed:,.0f} tokens/s; {train[-1].tokens:,} tokens seen.")
    return "\n".join(lines)


def format_steps(rows: list[PipelineStep]) -> str:
    """Markdown table of the data pipeline's steps (`mai data stats` and the report)."""
    lines = ["| step | docs in | docs out | dropped | M chars out | top reasons |", "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        mb = f"{r.chars_out / 1e6:.2f}" if r.chars_out is not None else ""
        reasons = ", ".join(f"{k} {v}" for k, v in r.reasons.items())
        lines.append(
            f"| {r.step} | {r.documents_in} | {r.documents_out} | {r.documents_in - r.documents_out} | {mb} | {reasons} |"
        )
    return "\n".join(lines)


def _data_section(manifest: Manifest) -> str:
    rows = [
        "| source | documents | MB | mixture weight | train tokens | val tokens |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    rows += [
        f"| {name} | {s.documents} | {s.bytes / 1e6:.2f} | {manifest.mixture.get(name, 1.0)} | "
        f"{s.train_tokens:,} | {s.val_tokens:,} |"
        for name, s in manifest.sources.items()
    ]
    bpt = manifest.bytes_per_token
    summary = (
        f"{manifest.tokens.train:,} train and {manifest.tokens.val:,} validation tokens; "
        f"{bpt.train:.2f} / {bpt.val:.2f} bytes per token (train / val)."
    )
    return (
        "## Data\n\n"
        + "\n".join(rows)
        + "\n\n"
        + summary
        + "\n\n### Pipeline steps\n\n"
        + format_steps(manifest.steps)
        + "\n\n![Documents kept after each data pipeline step](data_steps.png)"
    )


def _eval_section(evaluation: EvalRecord) -> str:
    limit = evaluation.settings.limit
    lines = [
        "## Evaluation",
        "",
        f"`mai eval` on {evaluation.checkpoint}, "
        + (f"the first {limit} examples of each task." if limit else "every example of each task."),
        "",
    ]
    if evaluation.bpb is not None:
        lines += [f"Validation bits per byte: **{evaluation.bpb.val_bpb:.4f}**.", ""]
    if evaluation.core is not None:
        lines += [f"CORE-style aggregate (mean of (score − chance) / (1 − chance)): **{evaluation.core:+z.4f}**.", ""]
    lines += [
        "| task | metric | score | chance | centred |",
        "|---|---|---:|---:|---:|",
    ]
    lines += [
        f"| {name} | {t.metric} | {t.score:.4f} | {t.baseline:.3f} | {t.centered:+z.4f} |"
        for name, t in evaluation.tasks.items()
    ]
    return "\n".join(lines) + "\n\n![Evaluation](eval.png)"


def _samples_section(samples: Samples) -> str:
    parts = [f"## Samples\n\nFrom {samples.checkpoint}, temperature {samples.temperature}, top-k {samples.top_k}."]
    for sample in samples.samples:
        parts.append(f"**{sample.prompt}**\n\n```text\n{sample.text}\n```")
    return "\n\n".join(parts)


def _sft_section(record: SftRecord, folder: str | None) -> str:
    """Before and after fine-tuning on conversations, on the held-out ones; `folder`: where the
    fine-tuned run is, when it is not this one."""
    before, after = record.before, record.after
    where = f" into [{folder}/]({folder}/report.md)" if folder else ""
    lines = [
        "## Chat fine-tuning",
        "",
        f"`mai sft` fine-tuned `{record.base}`{where} ({record.checkpoint}); on {len(before.texts)} held-out "
        "conversations, answered greedily:",
        "",
        "| | base | fine-tuned |",
        "|---|---:|---:|",
        f"| held-out loss per assistant token | {record.base_val_loss:.3f} | {record.val_loss:.3f} |",
        f"| answers ending with the end-of-turn token | {before.end_of_turn_rate:.0%} | {after.end_of_turn_rate:.0%} |",
    ]
    for exchange in record.exchanges:
        lines += ["", f"**user:** {exchange.prompt}", "", "| base | fine-tuned |", "|---|---|"]
        lines.append(f"| {_cell(exchange.before)} | {_cell(exchange.after)} |")
    return "\n".join(lines)


def _cell(text: str) -> str:
    """Text as one markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|") or "(nothing)"
