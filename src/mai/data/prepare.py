"""The data stage: run the pipeline, train the tokenizer on its output, write shards and the manifest.

Writes into the run directory: data/work/ (stage outputs, logs, completion markers),
data/rejected/<step>.jsonl (every dropped document or unreadable file with its reason),
tokenizer.json, data/shards/*.bin and, last, data/manifest.json, so a run with a manifest has
complete, checksummed data. A rerun after a crash skips the tasks that finished; after a change of
settings it redoes what they change (see `prepare_data`).
"""

import gzip
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from mai.config import DataConfig, ModelConfig, RunConfig, SourceConfig, TokenizerConfig, redone_step
from mai.console import say
from mai.data.executors import Stages, check_executor, refuse_too_few_documents
from mai.data.filters import check_languages
from mai.data.pipeline import reset_pipeline, run_stages
from mai.data.readers import SYNTH_SAMPLES, check_source_files
from mai.data.shards import SOURCE_STATS, ShardWriter, read_summaries, val_threshold
from mai.data.stats import step_table
from mai.errors import MaiError
from mai.loading import load_tokenizer, save_tokenizer, tokenizer_from
from mai.run import RunDir, atomic_write_text, read_checkpoint_meta, sha256_file, write_json
from mai.run_files import Manifest, PipelineStep, Shard, SourceTotals, SplitRatios, Splits
from mai.taskdata import evaluation_texts
from mai.tokenizer import Tokenizer, check_vocab_size, train_tokenizer

DATA_STEPS = ("pipeline", "tokenizer", "shards")  # in order: a change redoes its step and those after it


def prepare_data(run: RunDir, config: RunConfig) -> Manifest:
    """Run the whole data stage, or what of it is not done yet; return the manifest.

    A rerun redoes from the first step whose settings changed since the last run (the pipeline,
    the tokenizer, or the shards) and says so in one line; it rewrites the shards a deletion or
    corruption broke. A run with a checkpoint keeps the data and tokenizer it was trained on: it
    may only finish or repair them, never change them.
    """
    started = time.time()
    settings = data_settings(run, config)  # before the synth paths are filled in: a moved run is the same run
    config = with_synth_paths(run, config)
    check_vocab_size(config.model.vocab_size)
    copied = copied_tokenizer(config)
    check_languages(config.data.languages)
    check_source_files(config.data.sources)
    check_executor(config.data)
    stages = Stages(run.data_dir, config.data)
    plan = plan_preparation(run, stages, settings)
    if plan.message:
        say(plan.message)
    if plan.redo is not None:
        run.manifest_path.unlink(missing_ok=True)  # first: a manifest lists complete, checksummed data only
        if plan.redo == "pipeline":
            reset_pipeline(stages)
        for folder in (stages.logs("shards"), stages.work / "shard_summaries", run.shards_dir):
            shutil.rmtree(folder, ignore_errors=True)
    record_settings(stages, settings)
    clean = run_stages(stages, evaluation_texts())
    repaired = repair_shards(run, stages)
    if stages.complete("shards"):
        say("data: shards done before, skipped")
    else:
        sample_bytes = config.tokenizer.sample_mb * 1e6 if plan.train_tokenizer else 0
        doc_ids, sample = scan_documents(stages.work / clean, sample_bytes)
        if len(doc_ids) < 2:
            refuse_too_few_documents(stages, len(doc_ids))
        if plan.train_tokenizer:
            whole_corpus = len(sample) == len(doc_ids)
            tokenizer = copied or train_tokenizer(sample, config.model.vocab_size, whole_corpus=whole_corpus)
            save_tokenizer(tokenizer, run.path)
        write_shards(run, stages, clean, val_threshold(doc_ids, config.data.val_fraction, config.data.seed))
        if not stages.complete("shards"):
            raise MaiError(
                f"the shard jobs were submitted to {config.data.executor} and are not finished; "
                "rerun `mai data prepare` when they are (finished tasks are skipped)"
            )
    if not stages.ran and not repaired and run.manifest_path.is_file():
        try:
            return run.read_manifest()  # nothing was redone: the manifest, and its timing, stand
        except MaiError:
            pass  # an unreadable manifest is written again below
    stages.merge_rejects()
    manifest = build_manifest(run, config, stages, time.time() - started)
    write_json(run.manifest_path, manifest)
    return manifest


def copied_tokenizer(config: RunConfig) -> Tokenizer | None:
    """The tokenizer tokenizer.copy_from names (None: train one), checked against model.vocab_size."""
    if config.tokenizer.copy_from is None:
        return None
    tokenizer = tokenizer_from(Path(config.tokenizer.copy_from))
    if tokenizer.vocab_size != config.model.vocab_size:
        raise MaiError(
            f"tokenizer.copy_from {config.tokenizer.copy_from} has {tokenizer.vocab_size} tokens; "
            f"set model.vocab_size = {tokenizer.vocab_size} to match",
            parameter="model.vocab_size",
        )
    return tokenizer


def with_synth_paths(run: RunDir, config: RunConfig) -> RunConfig:
    """The config with each synth source that names no path reading this run's synth/ folder."""
    sources = [
        s.model_copy(update={"path": str(run.synth_dir)}) if s.kind == "synth" and not s.path else s
        for s in config.data.sources
    ]
    return config.model_copy(update={"data": config.data.model_copy(update={"sources": sources})})


def data_settings(run: RunDir, config: RunConfig) -> dict:
    """Every setting the data stage reads, as recorded in data/work/config.json; a synth source's
    samples count as one of its settings (by their sha256), so that new samples redo the pipeline."""
    return {
        "data": config.data.model_dump(),
        "tokenizer": config.tokenizer.model_dump(),
        "vocab_size": config.model.vocab_size,
        "synth_samples": {
            s.name: sha256_file(samples)
            for s in with_synth_paths(run, config).data.sources
            if s.kind == "synth" and (samples := Path(s.path) / SYNTH_SAMPLES).is_file()
        },
    }


def settings_by_step(settings: dict) -> dict[str, dict]:
    """Recorded settings (see data_settings) by dotted name, grouped by the first step that reads them.

    Which step a setting redoes is declared on its config field (config.redo): the pipeline's stages
    read data settings, the tokenizer is trained on their output, the shards take both.
    """
    steps: dict[str, dict] = {step: {} for step in DATA_STEPS}

    def add(model: type, values: dict, prefix: str, default: str | None) -> None:
        for name, field in model.model_fields.items():
            step = redone_step(field, default)
            if step is not None and name in values:
                steps[step][prefix + name] = values[name]

    data = settings["data"]
    add(DataConfig, {k: v for k, v in data.items() if k != "sources"}, "data.", "pipeline")
    steps["pipeline"]["data.sources"] = [source["name"] for source in data["sources"]]  # their order too
    for source in data["sources"]:
        add(SourceConfig, source, f"data.sources[{source['name']}].", "pipeline")
    add(TokenizerConfig, settings["tokenizer"], "tokenizer.", "tokenizer")
    add(ModelConfig, {"vocab_size": settings["vocab_size"]}, "model.", None)  # of the model, the data reads only this
    for name, sha256 in settings.get("synth_samples", {}).items():
        steps["pipeline"][f"data.sources[{name}].samples"] = sha256
    return steps


def recorded_settings(stages: Stages) -> dict | None:
    """The settings data/work was made with, or None when there is no readable record of them."""
    try:
        settings = json.loads((stages.work / "config.json").read_text())
        settings_by_step(settings)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return settings


def record_settings(stages: Stages, settings: dict) -> None:
    text = json.dumps(settings, sort_keys=True)
    marker = stages.work / "config.json"
    if not marker.is_file() or marker.read_text() != text:
        stages.work.mkdir(parents=True, exist_ok=True)
        atomic_write_text(marker, text)


@dataclass
class Plan:
    """What a rerun redoes: from `redo` ("pipeline", "tokenizer", "shards") on, or only unfinished tasks (None)."""

    redo: str | None
    train_tokenizer: bool
    message: str | None = None


def plan_preparation(run: RunDir, stages: Stages, settings: dict) -> Plan:
    """Decide what the settings and the files on disk leave to redo, changing nothing.

    Refuses, on a run with a checkpoint, anything that would give it other data or another tokenizer.
    """
    recorded = recorded_settings(stages)
    changed = {step: [] for step in ("pipeline", "tokenizer", "shards")}
    if recorded is not None:
        old, new = settings_by_step(recorded), settings_by_step(settings)
        for step, names in changed.items():
            names += sorted(k for k in old[step].keys() | new[step].keys() if old[step].get(k) != new[step].get(k))
    redo = "pipeline" if recorded is None else next((step for step, names in changed.items() if names), None)
    keys = ", ".join(name for names in changed.values() for name in names)
    checkpoint = run.latest_checkpoint()
    tokenizer_problem = check_tokenizer_files(run, recorded_tokenizer_sha256(run, checkpoint))
    if checkpoint is not None:
        if redo is not None:
            why = (
                f"settings changed since they were prepared ({keys})"
                if keys
                else "data/work/config.json, the record of the settings they were prepared with, is missing or unreadable"
            )
            raise MaiError(
                f"{run.path} has {checkpoint.name}, trained on its data and tokenizer; {why}, and preparing "
                f"again would replace them: restore {run.config_path.name}, or try the new settings in a new run "
                "directory (`mai init`)"
            )
        if tokenizer_problem:
            raise MaiError(
                f"{tokenizer_problem} ({checkpoint.name} was trained with the original), and preparing the data "
                "again would train a new one; restore the original, or use a new run directory (`mai init`)"
            )
        return Plan(None, train_tokenizer=False)  # finish or repair the shards with the tokenizer it has
    queued = stages.queued_slurm_jobs() if redo is not None else []
    if queued:
        why = f"the data settings changed ({keys})" if keys else "data/work has no record of its settings"
        raise MaiError(
            f"{why}, and redoing the data now would race Slurm jobs {', '.join(queued)} of the last run, still "
            "queued or running; wait for them to end (squeue), or cancel them (scancel), then rerun"
        )
    # Shard tasks done or queued on Slurm read the tokenizer.json there: it is this run's.
    shards_started = stages.completed_tasks("shards") > 0 or stages.queued_slurm_job("shards") is not None
    if redo == "pipeline":
        message = f"data: data settings changed ({keys}), rerunning the pipeline" if keys else None
        if not keys and stages.work.exists():
            message = "data: data/work has no record of the settings it was made with, rerunning the pipeline"
        return Plan("pipeline", train_tokenizer=True, message=message)
    if redo == "tokenizer":
        message = f"data: tokenizer settings changed ({keys}), retraining the tokenizer and rewriting shards"
        return Plan("tokenizer", train_tokenizer=True, message=message)
    if tokenizer_problem and shards_started:
        message = f"data: {tokenizer_problem}, retraining the tokenizer and rewriting shards"
        return Plan("tokenizer", train_tokenizer=True, message=message)
    # Before the first shard task, the tokenizer.json there may be one that other settings left.
    train = bool(tokenizer_problem) or not shards_started
    if redo == "shards":
        return Plan("shards", train, f"data: shard settings changed ({keys}), rewriting shards")
    return Plan(None, train)


def check_tokenizer_files(run: RunDir, expected_sha256: str | None) -> str | None:
    """What is wrong with the run's tokenizer files, or None: missing, or not the recorded tokenizer."""
    for path in (run.tokenizer_path, run.path / "tokenizer_config.json"):
        if not path.is_file():
            return f"{path.name} is missing"
    if expected_sha256 not in (None, sha256_file(run.tokenizer_path)):
        return "tokenizer.json is not the one the shards were made with"
    return None


def recorded_tokenizer_sha256(run: RunDir, checkpoint: Path | None) -> str | None:
    """The sha256 of the tokenizer the shards were made with (manifest), or the model trained with."""
    if run.manifest_path.is_file():
        try:
            return run.read_manifest().tokenizer_sha256
        except MaiError:
            pass  # an unreadable manifest is written again
    if checkpoint is not None:
        return read_checkpoint_meta(checkpoint).tokenizer_sha256
    return None


def repair_shards(run: RunDir, stages: Stages) -> list[str]:
    """Mark each shard task whose shard is missing or corrupt as not done, so that the shards stage
    writes it again (the same bytes: same documents, tokenizer and seed); return those tasks.

    datatrove's completion markers say only that a task finished once; `mai train` checks each shard's
    sha256 and tells the user to delete a corrupt one and rerun this stage.
    """
    completions = stages.logs("shards") / "completions"
    broken, redo = [], []
    for marker in sorted(completions.iterdir()) if completions.is_dir() else []:
        summary = stages.work / "shard_summaries" / f"{marker.name}.json"
        try:
            shards = json.loads(summary.read_text())["shards"]
        except (OSError, ValueError, KeyError, TypeError):
            redo.append(marker)  # its summary is gone, so which shards it wrote is unknown
            continue
        bad = [s["path"] for s in shards if not intact(run.data_dir / s["path"], s["sha256"])]
        if bad:
            broken += bad
            redo.append(marker)
    if broken:
        them = "it" if len(broken) == 1 else "them"
        say(
            f"data: {len(broken)} shard{'s' * (len(broken) > 1)} missing or corrupt ({', '.join(sorted(broken))}), "
            f"rewriting {them}"
        )
    for marker in redo:
        marker.unlink()
    return [marker.name for marker in redo]


def intact(path: Path, sha256: str) -> bool:
    return path.is_file() and sha256_file(path) == sha256


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
    val_ids = set(run.read_manifest().val_documents)
    doc_ids, sample = scan_documents(clean, config.tokenizer.sample_mb * 1e6)
    tokenizer = copied_tokenizer(config) or train_tokenizer(
        sample, config.model.vocab_size, whole_corpus=len(sample) == len(doc_ids)
    )
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


def build_manifest(run: RunDir, config: RunConfig, stages: Stages, seconds: float) -> Manifest:
    summaries = read_summaries(stages.work / "shard_summaries")
    shards = sorted((Shard(**s) for summary in summaries for s in summary["shards"]), key=lambda s: s.path)
    tokens = {split: sum(s.tokens for s in shards if s.split == split) for split in ("train", "val")}
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
    return Manifest(
        sources={name: SourceTotals(**totals) for name, totals in sources.items()},
        mixture={s.name: s.weight for s in config.data.sources},
        val_documents=sorted(d for summary in summaries for d in summary["val_documents"]),
        dtype="uint16" if tokenizer.vocab_size <= 2**16 else "uint32",
        vocab_size=tokenizer.vocab_size,
        tokenizer_sha256=sha256_file(run.tokenizer_path),
        bytes_per_token=SplitRatios(**{split: round(text_bytes[split] / tokens[split], 4) for split in tokens}),
        tokens=Splits(**tokens),
        shards=shards,
        steps=[PipelineStep(**row) for row in step_table(stages)],
        pipeline=config.data.model_dump(),
        seconds=round(seconds, 2),
    )
