"""The web-data pipeline as datatrove stages: read → extract → language → quality → PII → exact dedup
→ MinHash dedup → decontaminate, each stage run by a datatrove executor (executors.py).

Everything lives under the run's data/work/: each stage's outputs and its logging folder, whose
completion markers make a rerun skip finished tasks, so a killed pipeline resumes. Every dropped
document goes to data/rejected/<step>/ with its reason; each stage's stats feed `mai data stats`.
datatrove's per-task logs go to data/work/logs/<stage>/logs/ only; the console gets one line per
stage, and a task's errors.
"""

import shutil

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

from mai.data.executors import Stages
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


def normalized_text(doc) -> str:
    """Exact-duplicate key: lower-cased text with runs of whitespace collapsed."""
    return " ".join(doc.text.lower().split())


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
    stages.run("filter", filter_steps(stages))
    current = "filtered"
    stages.check_documents_left(current)
    if config.exact_dedup:
        exact = ExactDedupConfig(content_getter=normalized_text)
        stages.run(
            "exact_signatures", [stages.reader(current), ExactDedupSignature(stages.folder("exact/sigs"), exact)]
        )
        stages.run(
            "exact_find", [ExactFindDedups(stages.folder("exact/sigs"), stages.folder("exact/dups"), exact)], tasks=1
        )
        stages.run(
            "exact_filter",
            [
                stages.reader(current),
                ExactDedup(stages.folder("exact/dups"), exact, exclusion_writer=stages.rejects("exact_dedup")),
                stages.writer("exact_deduped"),
            ],
        )
        current = "exact_deduped"
        stages.check_documents_left(current)
    clean_steps = [stages.reader(current)]
    if config.minhash_dedup:
        signatures, buckets, remove = (stages.folder(f"minhash/{f}") for f in ("sigs", "buckets", "remove_ids"))
        stages.run("minhash_signatures", [stages.reader(current), MinhashDedupSignature(signatures, MINHASH)])
        stages.run(
            "minhash_buckets", [MinhashDedupBuckets(signatures, buckets, config=MINHASH)], tasks=MINHASH.num_buckets
        )
        stages.run("minhash_cluster", [MinhashDedupCluster(buckets, remove, config=MINHASH)], tasks=1)
        clean_steps.append(MinhashDedup(remove, exclusion_writer=stages.rejects("minhash_dedup")))
    if config.decontaminate:
        ngrams = stages.work / "eval_ngrams.npz"
        if not ngrams.is_file():
            write_eval_ngrams(ngrams, eval_texts)
        clean_steps.append(Decontaminate(str(ngrams), exclusion_writer=stages.rejects("decontaminate")))
    stages.run("clean", clean_steps + [stages.writer("clean")])
    if not stages.complete("clean"):
        raise MaiError(
            f"the pipeline's jobs were submitted to {config.executor} and are not finished; "
            "rerun `mai data prepare` when they are (finished tasks are skipped)"
        )
    stages.check_documents_left("clean")
    return "clean"


def reset_pipeline(stages: Stages) -> None:
    """Delete every stage's outputs, logs and completion markers, and the rejects: made with other settings."""
    shutil.rmtree(stages.work, ignore_errors=True)
    shutil.rmtree(stages.rejected, ignore_errors=True)
