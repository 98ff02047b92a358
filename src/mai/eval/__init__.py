"""Evaluation: bits per byte, benchmark tasks scored three ways, a CORE-style aggregate, lm-eval interop.

runner.py is `mai eval`; scoring.py computes log-likelihoods and greedy completions; sandbox.py
runs generated code; harness.py and lm_eval_tasks.py connect to lm-evaluation-harness;
compare.py puts runs side by side; record.py finds and checks eval.json. The task data and its
registry live in mai.taskdata.
"""
