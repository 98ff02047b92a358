"""Data pipeline throughput: our full pipeline against datatrove's stock FineWeb-style pipeline.

Same input (web-like JSONL built from the demo corpora: King James Bible chapters and Shakespeare
scenes, with exact and near-duplicate copies), same executor (local, 4 tasks, 2 workers), arms
interleaved over rounds. The peer is datatrove's FineWeb example steps: Gopher repetition and
quality, C4 and FineWeb quality filters, MinHash dedup (4 stages) and PII, without its fastText
language filter, which downloads a model (ours identifies language with py3langid, offline).
Ours adds exact dedup, code rules and decontamination. Reported: documents/s and MB/s per core.

    python bench/data_throughput.py [--rounds 2]
"""

import argparse
import gzip
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.dedup import MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter, MinhashDedupSignature
from datatrove.pipeline.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
)
from datatrove.pipeline.formatters import PIIFormatter
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter

from common import summary, write_result
from mai.config import load_config
from mai.data.corpus import bible, shakespeare
from mai.data.executors import Stages
from mai.data.pipeline import MINHASH, run_stages
from mai.data.prepare import evaluation_texts

TASKS, WORKERS = 4, 2


def build_input(folder: Path) -> tuple[int, int]:
    """Write the web-like input; return (documents, bytes)."""
    rng = random.Random(0)
    docs = []
    for book, text in bible():
        verses = text.split("\n")
        docs += [(f"bible/{book}/{i}", "\n".join(verses[i : i + 25])) for i in range(0, len(verses), 25)]
    for play, text in shakespeare():
        scenes = text.split("\n\n\n")
        docs += [(f"shakespeare/{play}/{i}", scene) for i, scene in enumerate(scenes) if len(scene) > 500]
    docs += [(f"copy/{name}", text) for name, text in rng.sample(docs, len(docs) // 20)]
    folder.mkdir(parents=True)
    for part in range(TASKS):
        with gzip.open(folder / f"part{part}.jsonl.gz", "wt") as f:
            f.writelines(json.dumps({"id": i, "text": t}) + "\n" for i, t in docs[part::TASKS])
    return len(docs), sum(len(t.encode()) for _, t in docs)


def run_ours(input_dir: Path, work: Path) -> None:
    source = f'[{{name = "web", kind = "jsonl", path = "{input_dir}"}}]'
    config = load_config("tiny", [f"data.sources={source}", f"data.tasks={TASKS}", f"data.workers={WORKERS}"])
    stages = Stages(work, config.data)
    run_stages(stages, evaluation_texts())


def run_stock_fineweb(input_dir: Path, work: Path) -> None:
    """datatrove's FineWeb example steps (minus the fastText language filter) on the same executor."""

    def executor(name, pipeline, tasks=TASKS):
        return LocalPipelineExecutor(
            pipeline, tasks=tasks, workers=min(WORKERS, tasks), logging_dir=str(work / "logs" / name)
        )

    executor(
        "filter",
        [
            JsonlReader(str(input_dir)),
            GopherRepetitionFilter(),
            GopherQualityFilter(),
            C4QualityFilter(filter_no_terminal_punct=False),
            FineWebQualityFilter(),
            JsonlWriter(str(work / "filtered")),
        ],
    ).run()
    executor(
        "signatures", [JsonlReader(str(work / "filtered")), MinhashDedupSignature(str(work / "sigs"), MINHASH)]
    ).run()
    executor(
        "buckets", [MinhashDedupBuckets(str(work / "sigs"), str(work / "buckets"), config=MINHASH)], MINHASH.num_buckets
    ).run()
    executor("cluster", [MinhashDedupCluster(str(work / "buckets"), str(work / "remove"), config=MINHASH)], 1).run()
    executor(
        "dedup",
        [
            JsonlReader(str(work / "filtered")),
            MinhashDedupFilter(str(work / "remove")),
            PIIFormatter(),
            JsonlWriter(str(work / "output")),
        ],
    ).run()


def timed(fn, input_dir: Path, scratch: Path) -> float:
    work = scratch / f"work-{time.monotonic_ns()}"
    start = time.perf_counter()
    fn(input_dir, work)
    seconds = time.perf_counter() - start
    shutil.rmtree(work)
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="mai-data-bench-"))
    documents, size = build_input(scratch / "input")
    print(f"input: {documents} documents, {size / 1e6:.1f} MB")
    ours, peer = [], []
    for r in range(args.rounds):
        ours.append(timed(run_ours, scratch / "input", scratch))
        peer.append(timed(run_stock_fineweb, scratch / "input", scratch))
        print(f"  round {r + 1}: ours {ours[-1]:.1f} s, datatrove FineWeb {peer[-1]:.1f} s")
    shutil.rmtree(scratch)

    def rates(seconds):
        return {
            "seconds": summary(seconds),
            "documents_per_s": summary([documents / s for s in seconds]),
            "mb_per_s_per_core": summary([size / 1e6 / s / WORKERS for s in seconds]),
        }

    ratio = summary([p / o for o, p in zip(ours, peer, strict=True)])  # ours' speed over the peer's
    for name, seconds in (("ours", ours), ("datatrove FineWeb", peer)):
        r = rates(seconds)
        print(
            f"{name:<18} {r['documents_per_s']['median']:8.1f} docs/s  {r['mb_per_s_per_core']['median']:6.3f} MB/s/core (median)"
        )
    print(f"ratio (ours / datatrove, higher is better): median {ratio['median']:.2f}, best {ratio['best']:.2f}")
    path = write_result(
        "data_throughput",
        {
            "input": {"documents": documents, "bytes": size, "tasks": TASKS, "workers": WORKERS},
            "ours": rates(ours),
            "peer": {"name": "datatrove FineWeb example steps (no fastText language filter)", **rates(peer)},
            "ratio": ratio["median"],
            "goal": None,
            "met": None,
            "note": "The issue sets no ratio goal; ours does more work (language ID, exact dedup, code rules, decontamination).",
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
