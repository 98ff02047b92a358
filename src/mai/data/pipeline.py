"""The web-data pipeline as datatrove stages: read → extract → language → quality → PII → exact dedup
→ MinHash dedup → decontaminate, each stage run by a datatrove executor (local, Slurm or Ray).

Everything lives under the run's data/work/: each stage's outputs and its logging folder, whose
completion markers make a rerun skip finished tasks, so a killed pipeline resumes. Every dropped
document goes to data/rejected/<step>/ with its reason; each stage's stats.json feeds `mai data stats`.
"""

import shutil
from pathlib import Path

from datatrove.pipeline.dedup import MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupSignature
from datatrove.pipeline.dedup.exact_dedup import ExactDedupConfig, ExactDedupSignature, ExactFindDedups
from datatrove.pipeline.dedup.minhash import MinhashConfig
from datatrove.pipeline.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
)
from datatrove.pipeline.formatters import PIIFormatter
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter

from mai.config import DataConfig
from mai.data.filters import (
    CodeFilter,
    Decontaminate,
    ExactDedup,
    ExtractHtml,
    ForRules,
    LanguageFilter,
    MinhashDedup,
    write_eval_ngrams,
)
from mai.data.readers import build_reader
from mai.errors import MaiError

# FineWeb's near-duplicate setting: 5-gram shingles, 14 bands of 8 hashes (~0.92 detection at Jaccard 0.8).
MINHASH = MinhashConfig(n_grams=5, num_buckets=14, hashes_per_bucket=8, seed=1)
STAGE_ORDER = (
    "filter",
    "exact_signatures",
    "exact_find",
    "exact_filter",
    "minhash_signatures",
    "minhash_buckets",
    "minhash_cluster",
    "clean",
)


def normalized_text(doc) -> str:
    """Exact-duplicate key: lower-cased text with runs of whitespace collapsed."""
    return " ".join(doc.text.lower().split())


class Stages:
    """The folders of one run's pipeline and the executor that runs each stage."""

    def __init__(self, data_dir: Path, config: DataConfig):
        self.work, self.rejected, self.config = data_dir / "work", data_dir / "rejected", config

    def folder(self, name: str) -> str:
        return str(self.work / name)

    def rejects(self, step: str) -> JsonlWriter:
        return JsonlWriter(str(self.rejected / step), output_filename="${rank}.jsonl.gz")

    def logs(self, stage: str) -> Path:
        return self.work / "logs" / stage

    def executor(self, stage: str, pipeline: list, tasks: int | None = None, depends=None):
        tasks = tasks or self.config.tasks
        common = {"pipeline": pipeline, "tasks": tasks, "logging_dir": str(self.logs(stage))}
        options = dict(self.config.executor_options)
        if self.config.executor == "local":
            from datatrove.executor import LocalPipelineExecutor

            workers = min(self.config.workers or tasks, tasks)
            return LocalPipelineExecutor(**common, workers=workers, depends=depends, **options)
        if self.config.executor == "slurm":
            from datatrove.executor import SlurmPipelineExecutor

            return SlurmPipelineExecutor(**common, job_name=f"mai-{stage}", depends=depends, **options)
        from datatrove.executor import RayPipelineExecutor

        return RayPipelineExecutor(**common, depends=depends, **options)

    def complete(self, stage: str, tasks: int | None = None) -> bool:
        completions = self.logs(stage) / "completions"
        return completions.is_dir() and len(list(completions.iterdir())) >= (tasks or self.config.tasks)

    def reader(self, folder: str) -> JsonlReader:
        return JsonlReader(self.folder(folder), glob_pattern="*.jsonl.gz", doc_progress=True)

    def writer(self, folder: str) -> JsonlWriter:
        return JsonlWriter(self.folder(folder), output_filename="${rank}.jsonl.gz")


def filter_steps(stages: Stages) -> list:
    """Read every source, then extract, identify language, apply quality rules and scrub PII."""
    config = stages.config
    steps = [build_reader(source, config.seed, stages.rejects(f"read_{source.name}")) for source in config.sources]
    steps += [
        ExtractHtml(),
        LanguageFilter(config.languages, config.language_threshold, exclusion_writer=stages.rejects("language")),
        ForRules("web", GopherRepetitionFilter(), exclusion_writer=stages.rejects("gopher_repetition")),
        ForRules("web", GopherQualityFilter(), exclusion_writer=stages.rejects("gopher_quality")),
        # FineWeb keeps lines without terminal punctuation (filter_no_terminal_punct=False).
        ForRules("web", C4QualityFilter(filter_no_terminal_punct=False), exclusion_writer=stages.rejects("c4")),
        ForRules("web", FineWebQualityFilter(), exclusion_writer=stages.rejects("fineweb")),
        ForRules("code", CodeFilter(), exclusion_writer=stages.rejects("code")),
    ]
    if config.pii:
        steps.append(PIIFormatter(only_remove_public_ips=False, email_replacement="<EMAIL>", ip_replacement="<IP>"))
    return steps + [stages.writer("filtered")]


def run_stages(stages: Stages, eval_texts) -> str:
    """Run (or resume) every processing stage; return the folder holding the clean documents."""
    config = stages.config
    stages.executor("filter", filter_steps(stages)).run()
    current = "filtered"
    if config.exact_dedup:
        exact = ExactDedupConfig(content_getter=normalized_text)
        stages.executor(
            "exact_signatures", [stages.reader(current), ExactDedupSignature(stages.folder("exact/sigs"), exact)]
        ).run()
        stages.executor(
            "exact_find", [ExactFindDedups(stages.folder("exact/sigs"), stages.folder("exact/dups"), exact)], tasks=1
        ).run()
        stages.executor(
            "exact_filter",
            [
                stages.reader(current),
                ExactDedup(stages.folder("exact/dups"), exact, exclusion_writer=stages.rejects("exact_dedup")),
                stages.writer("exact_deduped"),
            ],
        ).run()
        current = "exact_deduped"
    clean_steps = [stages.reader(current)]
    if config.minhash_dedup:
        signatures, buckets, remove = (stages.folder(f"minhash/{f}") for f in ("sigs", "buckets", "remove_ids"))
        stages.executor(
            "minhash_signatures", [stages.reader(current), MinhashDedupSignature(signatures, MINHASH)]
        ).run()
        stages.executor(
            "minhash_buckets", [MinhashDedupBuckets(signatures, buckets, config=MINHASH)], tasks=MINHASH.num_buckets
        ).run()
        stages.executor("minhash_cluster", [MinhashDedupCluster(buckets, remove, config=MINHASH)], tasks=1).run()
        clean_steps.append(MinhashDedup(remove, exclusion_writer=stages.rejects("minhash_dedup")))
    if config.decontaminate:
        ngrams = stages.work / "eval_ngrams.npz"
        if not ngrams.is_file():
            write_eval_ngrams(ngrams, eval_texts)
        clean_steps.append(Decontaminate(str(ngrams), exclusion_writer=stages.rejects("decontaminate")))
    stages.executor("clean", clean_steps + [stages.writer("clean")]).run()
    if not stages.complete("clean"):
        raise MaiError(
            f"the pipeline's jobs were submitted to {config.executor} and are not finished; "
            "rerun `mai data prepare` when they are (finished tasks are skipped)"
        )
    return "clean"


def reset_if_config_changed(stages: Stages, fingerprint: str) -> None:
    """Completion markers are only valid for the config that made them: start over when it changes."""
    marker = stages.work / "config.json"
    if marker.is_file() and marker.read_text() != fingerprint:
        shutil.rmtree(stages.work)
        shutil.rmtree(stages.rejected, ignore_errors=True)
    stages.work.mkdir(parents=True, exist_ok=True)
    marker.write_text(fingerprint)
