"""Per-step statistics of the data pipeline, read from each stage's datatrove stats.json."""

import json

STAGES = ("filter", "exact_filter", "clean")
COUNTED = ("READER", "EXTRAC", "FILTER", "DEDUP")  # steps that read sources, drop or keep documents


def step_table(stages) -> list[dict]:
    """One row per reading or dropping step: documents in/out, characters out, top drop reasons."""
    rows = []
    for stage in STAGES:
        path = stages.logs(stage) / "stats.json"
        if path.is_file():
            for step in json.loads(path.read_text()):
                counted = any(k in step["name"] for k in COUNTED)
                if counted and not (stage != "filter" and "READER" in step["name"]):  # skip re-reads of outputs
                    rows.append(_row(step))
    return rows


def _row(step: dict) -> dict:
    stats = step["stats"]

    def value(key: str, field: str = "total") -> int:
        entry = stats.get(key, 0)
        return int(entry.get(field, 0) if isinstance(entry, dict) else entry)

    reasons = {k.split("_", 1)[1]: value(k) for k in stats if k.startswith(("dropped_", "rejected_"))}
    if "READER" in step["name"]:
        out = value("doc_len", "n")
        documents_in = out + sum(value(k) for k in stats if k.startswith("rejected_"))
    else:
        documents_in, out = value("total"), value("forwarded")
    return {
        "step": step["name"].split(": ", 1)[-1],
        "documents_in": documents_in,
        "documents_out": out,
        "chars_out": value("doc_len") if "doc_len" in stats else None,
        "reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])[:3]),
    }


def format_table(rows: list[dict]) -> str:
    """Markdown table of step rows (used by `mai data stats` and the report)."""
    lines = ["| step | docs in | docs out | dropped | M chars out | top reasons |", "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        mb = f"{r['chars_out'] / 1e6:.2f}" if r["chars_out"] is not None else ""
        reasons = ", ".join(f"{k} {v}" for k, v in r["reasons"].items())
        lines.append(
            f"| {r['step']} | {r['documents_in']} | {r['documents_out']} | "
            f"{r['documents_in'] - r['documents_out']} | {mb} | {reasons} |"
        )
    return "\n".join(lines)
