"""Per-step statistics of the data pipeline, read from each stage's datatrove stats.json."""

import json
from pathlib import Path

from datatrove.utils.stats import MetricStats, PipelineStats

STAGES = ("filter", "exact_filter", "clean")
COUNTED = ("READER", "EXTRAC", "FILTER", "DEDUP")  # steps that read sources, drop or keep documents


def step_table(stages) -> list[dict]:
    """One row per reading or dropping step: documents in/out, characters out, top drop reasons."""
    rows = []
    for stage in STAGES:
        for step in stage_stats(stages.logs(stage)):
            counted = any(k in step["name"] for k in COUNTED)
            if counted and not (stage != "filter" and "READER" in step["name"]):  # skip re-reads of outputs
                rows.append(step_row(step))
    return rows


def stage_stats(logs: Path) -> list[dict]:
    """A stage's step stats summed over all its tasks.

    datatrove's stats.json sums only the tasks of the last invocation: after a kill and rerun it
    would miss those that finished before. Every task's own stats/NNNNN.json stays.
    """
    tasks = sorted((logs / "stats").glob("*.json"))
    if not tasks:
        return []
    total = sum((PipelineStats.from_json(json.loads(path.read_text())) for path in tasks), start=PipelineStats())
    return json.loads(total.to_json())


def step_row(step: dict) -> dict:
    stats = step["stats"]

    def value(key: str) -> int:
        entry = stats.get(key, 0)
        return int(entry.get("total", 0) if isinstance(entry, dict) else entry)

    reasons = {k.split("_", 1)[1]: value(k) for k in stats if k.startswith(("dropped_", "rejected_"))}
    if "READER" in step["name"]:
        # datatrove's JSON leaves out the count of documents when it is 1; its from_dict restores it
        out = MetricStats.from_dict(stats["doc_len"]).n if "doc_len" in stats else 0
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
