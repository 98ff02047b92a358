"""Running pipeline stages on datatrove's executors (local, Slurm or Ray), and what a rerun finds of earlier runs.

Each stage's logging folder under data/work/logs/<stage>/ holds datatrove's completion markers, so a
rerun skips finished tasks; on Slurm it also records the stage's job id, so a rerun leaves alone a
job still queued or running and resubmits one stuck behind a failed job. A local or Ray stage that
has a failed task, or leaves no document, stops the run in one line.
"""

import difflib
import gzip
import importlib.util
import inspect
import json
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter

from mai.config import DataConfig
from mai.console import say
from mai.data.datatrove_compat import LocalExecutor, console_logs_warnings_only
from mai.data.readers import progress_bars
from mai.errors import MaiError
from mai.run import atomic_write_text


def executor_class(executor: str) -> type:
    from datatrove.executor import RayPipelineExecutor, SlurmPipelineExecutor

    return {"local": LocalPipelineExecutor, "slurm": SlurmPipelineExecutor, "ray": RayPipelineExecutor}[executor]


# The executor arguments mai sets itself, per executor, and from what.
SET_BY_MAI = {
    "local": {"pipeline": "each stage", "tasks": "data.tasks", "logging_dir": "each stage", "workers": "data.workers"},
    "slurm": {
        "pipeline": "each stage",
        "tasks": "data.tasks",
        "logging_dir": "each stage",
        "job_name": "each stage",
        "depends": "each stage",
        "depends_job_id": "each stage",
    },
    "ray": {"pipeline": "each stage", "tasks": "data.tasks", "logging_dir": "each stage"},
}


def check_executor(config: DataConfig) -> None:
    """Refuse an executor that cannot start, or options its class does not take, before any pipeline work.

    Otherwise each would fail at the first stage with datatrove's traceback: sbatch not found, ray
    not importable, or a TypeError from the executor's __init__.
    """
    name, ours = config.executor, SET_BY_MAI[config.executor]
    parameters = inspect.signature(executor_class(name).__init__).parameters
    options = [p for p in parameters if p != "self" and p not in ours]
    for key in config.executor_options:
        if key in ours:
            source = f"from {ours[key]}" if ours[key].startswith("data.") else f"for {ours[key]}"
            raise MaiError(
                f"data.executor_options: {key} is set by mai {source}; remove it", parameter="data.executor_options"
            )
        if key not in options:
            close = difflib.get_close_matches(key, options, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise MaiError(
                f"data.executor_options: the {name} executor has no option {key!r}{hint}; "
                f"its options are {', '.join(options)}",
                parameter="data.executor_options",
            )
    required = [p for p in options if parameters[p].default is inspect.Parameter.empty]
    missing = [p for p in required if p not in config.executor_options]
    if missing:
        raise MaiError(
            f"data.executor = {name!r} needs {', '.join(missing)} in data.executor_options",
            parameter="data.executor_options",
        )
    absent = [c for c in ("sbatch", "squeue", "scancel") if shutil.which(c) is None] if name == "slurm" else []
    if absent:
        raise MaiError(
            f"data.executor = 'slurm' needs Slurm's {', '.join(absent)} on PATH, and "
            f"{'they are' if len(absent) > 1 else 'it is'} not there; run this on a machine that submits Slurm jobs, "
            "or set data.executor = 'local'",
            parameter="data.executor",
        )
    if name == "ray" and importlib.util.find_spec("ray") is None:
        raise MaiError(
            "data.executor = 'ray' needs the ray package, which is not installed; `pip install ray`, "
            "or set data.executor = 'local'",
            parameter="data.executor",
        )


class Stages:
    """The folders of one run's pipeline and the executor that runs each stage."""

    def __init__(self, data_dir: Path, config: DataConfig):
        self.work, self.rejected, self.config = data_dir / "work", data_dir / "rejected", config
        self.ran: list[str] = []  # the stages that had tasks left to run
        self.last_job: str | None = None  # the Slurm job of the stage before, which the next one waits for

    def folder(self, name: str) -> str:
        return str(self.work / name)

    def rejects(self, step: str) -> JsonlWriter:
        return JsonlWriter(str(self.rejected / step), output_filename="${rank}.jsonl.gz")

    def logs(self, stage: str) -> Path:
        return self.work / "logs" / stage

    def executor(self, stage: str, pipeline: list, tasks: int):
        common = {"pipeline": pipeline, "tasks": tasks, "logging_dir": str(self.logs(stage))}
        options = dict(self.config.executor_options)
        if self.config.executor == "local":
            workers = min(self.config.workers or tasks, tasks)
            executor = LocalExecutor(**common, workers=workers, **options)
            executor.progress_bars = progress_bars()
            return executor
        if self.config.executor == "slurm":  # each stage's job waits for the one submitted before it
            return executor_class("slurm")(**common, job_name=f"mai-{stage}", depends_job_id=self.last_job, **options)
        return executor_class("ray")(**common, **options)

    def run(self, stage: str, pipeline: list, tasks: int | None = None) -> None:
        """Run one stage, skipping the tasks a previous run finished, and say so in one line."""
        tasks = tasks or self.config.tasks
        done = self.completed_tasks(stage)
        if done >= tasks:
            say(f"data: {stage} done before, skipped")
            return
        last_job = self.slurm_job(stage)
        state = slurm_state(last_job) if last_job else "ended"
        if state == "queued":  # submitting it again would run tasks twice, writing the same files
            say(f"data: {stage}, Slurm job {last_job} still queued or running")
            self.last_job = last_job
            return
        if state == "stuck":
            subprocess.run(["scancel", last_job], capture_output=True)
            say(f"data: {stage}, Slurm job {last_job} waited for a job that failed, so could never start: cancelled")
        console_logs_warnings_only()
        started = time.perf_counter()
        executor = self.executor(stage, pipeline, tasks)
        executor.run()
        self.ran.append(stage)
        count = f"{tasks} task" + "s" * (tasks > 1)
        if done:
            count = f"{tasks - done} of {count}"
        if self.config.executor != "slurm":  # the local and Ray executors return when the stage has run
            self.check_finished(stage, tasks)
            where = " on ray" if self.config.executor == "ray" else ""
            say(f"data: {stage}, {count} in {time.perf_counter() - started:.1f} s{where}")
            return
        self.last_job = executor.job_id
        atomic_write_text(self.logs(stage) / "slurm_job", executor.job_id)
        again = (
            f" again (job {last_job} has ended; its output is in {self.logs(stage) / 'slurm_logs'})" if last_job else ""
        )
        say(f"data: {stage}, {count} submitted to slurm{again}")

    def check_finished(self, stage: str, tasks: int) -> None:
        """Stop at a stage that ran with failed tasks, before the next stage reads its partial output.

        A failing local task raises; datatrove's Ray executor only logs "Only k/n tasks completed".
        """
        failed = tasks - self.completed_tasks(stage)
        if failed:
            raise MaiError(
                f"{failed} of {tasks} tasks of the {stage} stage failed on {self.config.executor}; their logs are in "
                f"{self.logs(stage) / 'logs'}; fix the cause and rerun `mai data prepare` (finished tasks are skipped)"
            )

    def slurm_job(self, stage: str) -> str | None:
        """The id of the stage's last Slurm job, if it was submitted to Slurm."""
        record = self.logs(stage) / "slurm_job"
        return record.read_text().strip() if self.config.executor == "slurm" and record.is_file() else None

    def queued_slurm_job(self, stage: str) -> str | None:
        """The stage's last Slurm job while it is pending or running, else None."""
        job = self.slurm_job(stage)
        return job if job and slurm_state(job) == "queued" else None

    def queued_slurm_jobs(self) -> list[str]:
        """The Slurm jobs, of any stage, still pending or running (not stuck behind a failed job)."""
        logs = self.work / "logs"
        stages = [p.name for p in logs.iterdir()] if logs.is_dir() else []
        jobs = [job for stage in stages if (job := self.queued_slurm_job(stage))]
        return sorted(jobs, key=lambda job: (len(job), job))  # in the order they were submitted: ids count up

    def complete(self, stage: str, tasks: int | None = None) -> bool:
        return self.completed_tasks(stage) >= (tasks or self.config.tasks)

    def completed_tasks(self, stage: str) -> int:
        """How many of a stage's tasks have datatrove's completion marker."""
        completions = self.logs(stage) / "completions"
        return len(list(completions.iterdir())) if completions.is_dir() else 0

    def reader(self, folder: str) -> JsonlReader:
        return JsonlReader(self.folder(folder), glob_pattern="*.jsonl.gz", doc_progress=progress_bars())

    def writer(self, folder: str) -> JsonlWriter:
        return JsonlWriter(self.folder(folder), output_filename="${rank}.jsonl.gz")

    def merge_rejects(self) -> None:
        """data/rejected/<step>/<rank>.jsonl.gz → data/rejected/<step>.jsonl, one file per step."""
        for step_dir in sorted(p for p in self.rejected.glob("*") if p.is_dir()):
            lines = []
            for part in sorted(step_dir.glob("*.jsonl.gz")):
                with gzip.open(part, "rt", encoding="utf-8") as f:
                    lines += [line for line in f if line.strip()]
            atomic_write_text(self.rejected / f"{step_dir.name}.jsonl", "".join(lines))

    def check_documents_left(self, folder: str) -> None:
        """Refuse an empty stage output, which datatrove's next reader would crash on ("No files found").

        Local and Ray stages have run here; Slurm's may still be queued.
        """
        if self.config.executor != "slurm" and not has_documents(self.work / folder):
            refuse_too_few_documents(self, 0)


def slurm_state(job: str) -> str:
    """The job's state by squeue: queued (pending or running), ended (no longer listed), or stuck:
    waiting for a job that failed (reason DependencyNeverSatisfied), which Slurm never starts.
    """
    listed = subprocess.run(["squeue", "--noheader", "--jobs", job, "--format", "%r"], capture_output=True, text=True)
    reasons = listed.stdout.split() if listed.returncode == 0 else []
    if not reasons:
        return "ended"
    return "stuck" if all(reason == "DependencyNeverSatisfied" for reason in reasons) else "queued"


def has_documents(folder: Path) -> bool:
    for path in folder.glob("*.jsonl.gz"):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            if f.readline().strip():
                return True
    return False


def drop_counts(stages: Stages) -> Counter:
    """Dropped documents per step from the merged rejects; a reader's also per reason (binary, no_text...)."""
    counts = Counter()
    for path in stages.rejected.glob("*.jsonl"):
        with path.open(encoding="utf-8") as f:
            for line in f:
                if path.stem.startswith("read_"):
                    counts[f"{path.stem} {json.loads(line)['metadata'].get('filter_reason')}"] += 1
                else:
                    counts[path.stem] += 1
    return counts


def refuse_too_few_documents(stages: Stages, kept: int) -> None:
    """Raise the one error for a pipeline that kept too little to train on: what it dropped, and where."""
    stages.merge_rejects()
    counts = drop_counts(stages)
    dropped = sum(counts.values())
    if not dropped:
        raise MaiError(f"data.sources gave the pipeline too few documents to train on ({kept}); add data")
    reasons = ", ".join(f"{step}: {n}" for step, n in counts.most_common())
    outcome = f"kept only {kept} of {kept + dropped}" if kept else f"dropped all {dropped}"
    raise MaiError(
        f"the pipeline {outcome} documents ({reasons}); the dropped documents are in {stages.rejected}/",
        parameter="data.sources",
    )
