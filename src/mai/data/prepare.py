"""The data stage: run the pipeline, train the tokenizer on its output, write shards and the manifest.

Writes into the run directory: data/work/ (stage outputs, logs, completion markers),
data/rejected/<step>.jsonl (every dropped document or unreadable file with its reason),
tokenizer.json, data/shards/*.bin and, last, data/manifest.json, so a run with a manifest has
complete, checksummed data. A rerun after a crash skips the tasks that finished.
"""

import gzip
import json
import time

from mai.config import RunConfig
from mai.data.filters import check_languages
from mai.data.pipeline import Stages, refuse_too_few_documents, reset_if_config_changed, run_stages
from mai.data.readers import check_source_files
from mai.data.shards import SOURCE_STATS, ShardWriter, read_summaries, val_threshold
from mai.data.stats import step_table
from mai.errors import MaiError
from mai.run import RunDir, atomic_write_json, load_tokenizer, save_tokenizer, sha256_file
from mai.tokenizer import check_vocab_size, train_tokenizer


def prepare_data(run: RunDir, config: RunConfig) -> dict:
    """Run the whole data stage; return the manifest."""
    started = time.time()
    check_vocab_size(config.model.vocab_size)
    check_languages(config.data.languages)
    check_source_files(config.data.sources)
    stages = Stages(run.data_dir, config.data)
    fingerprint = json.dumps(
        {
            "data": config.data.model_dump(),
            "tokenizer": config.tokenizer.model_dump(),
            "vocab_size": config.model.vocab_size,
        },
        sort_keys=True,
    )
    reset_if_config_changed(stages, fingerprint)
    clean = run_stages(stages, evaluation_texts())
    doc_ids, sample = scan_documents(stages.work / clean, config.tokenizer.sample_mb * 1e6)
    if len(doc_ids) < 2:
        refuse_too_few_documents(stages, len(doc_ids))
    tokenizer = train_tokenizer(sample, config.model.vocab_size, whole_corpus=len(sample) == len(doc_ids))
    save_tokenizer(tokenizer, run.path)
    write_shards(run, stages, clean, val_threshold(doc_ids, config.data.val_fraction, config.data.seed))
    stages.merge_rejects()
    manifest = build_manifest(run, config, stages, time.time() - started)
    atomic_write_json(run.manifest_path, manifest)
    return manifest


def evaluation_texts():
    """(task, text) of every evaluation set registered in mai.taskdata, for decontamination."""
    try:
        from mai.taskdata import evaluation_texts as registered
    except ImportError:
        return iter(())
    return registered()


def scan_documents(folder, sample_bytes: float) -> tuple[list[str], list[str]]:
    """Every document id, and the leading documents up to sample_bytes as the tokenizer's sample."""
    doc_ids, sample, taken = [], [], 0
    for doc_id, text in read_documents(folder):
        doc_ids.append(doc_id)
        if taken < sample_bytes:
            sample.append(text)
            taken += len(text)
    return doc_ids, sample


def retrain_tokenizer(run: RunDir, config: RunConfig):
    """Train the tokenizer again on the pipeline's clean output; return it and its validation bytes/token."""
    clean = Stages(run.data_dir, config.data).work / "clean"
    if not clean.is_dir():
        raise MaiError(f"{run.path} has no pipeline output; run `mai data prepare {run.path}` first")
    checkpoint = run.latest_checkpoint()
    if checkpoint is not None:
        raise MaiError(
            f"{run.path} has {checkpoint.name}, trained with its tokenizer.json, which a new tokenizer would "
            "break; try tokenizer settings in a new run directory (`mai init`)"
        )
    val_ids = set(run.read_manifest()["val_documents"])
    doc_ids, sample = scan_documents(clean, config.tokenizer.sample_mb * 1e6)
    tokenizer = train_tokenizer(sample, config.model.vocab_size, whole_corpus=len(sample) == len(doc_ids))
    save_tokenizer(tokenizer, run.path)
    return tokenizer, tokenizer.bytes_per_token(text for doc_id, text in read_documents(clean) if doc_id in val_ids)


def read_documents(folder):
    """(id, text) of every document in a folder of datatrove JSONL outputs, in file order."""
    for path in sorted(folder.glob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                record = json.loads(line)
                yield record["id"], record["text"]


def write_shards(run: RunDir, stages: Stages, clean: str, threshold: int) -> None:
    summaries = stages.work / "shard_summaries"
    config = stages.config
    writer = ShardWriter(
        str(run.shards_dir),
        str(summaries),
        str(run.tokenizer_path),
        threshold,
        config.seed,
        {source.name: source.weight for source in config.sources},
        config.shard_tokens,
    )
    stages.run("shards", [stages.reader(clean), writer])


def build_manifest(run: RunDir, config: RunConfig, stages: Stages, seconds: float) -> dict:
    summaries = read_summaries(stages.work / "shard_summaries")
    shards = sorted((s for summary in summaries for s in summary["shards"]), key=lambda s: s["path"])
    tokens = {split: sum(s["tokens"] for s in shards if s["split"] == split) for split in ("train", "val")}
    text_bytes = {split: sum(summary["bytes"][split] for summary in summaries) for split in ("train", "val")}
    if not tokens["train"] or not tokens["val"]:
        raise MaiError(f"the pipeline left {tokens['train']} train and {tokens['val']} val tokens; add data")
    # Every configured source, so one whose documents were all dropped shows 0 instead of vanishing.
    sources = {source.name: dict.fromkeys(SOURCE_STATS, 0) for source in config.data.sources}
    for summary in summaries:
        for name, stats in summary["sources"].items():
            merged = sources.setdefault(name, dict.fromkeys(SOURCE_STATS, 0))
            for key, value in stats.items():
                merged[key] += value
    tokenizer = load_tokenizer(run, config.model.vocab_size)
    return {
        "sources": sources,
        "mixture": {s.name: s.weight for s in config.data.sources},
        "val_documents": sorted(d for summary in summaries for d in summary["val_documents"]),
        "dtype": "uint16" if tokenizer.vocab_size <= 2**16 else "uint32",
        "vocab_size": tokenizer.vocab_size,
        "tokenizer_sha256": sha256_file(run.tokenizer_path),
        "bytes_per_token": {split: round(text_bytes[split] / tokens[split], 4) for split in tokens},
        "tokens": tokens,
        "shards": shards,
        "steps": step_table(stages),
        "pipeline": config.data.model_dump(),
        "seconds": round(seconds, 2),
    }
