"""Data stage: prepare.py (the stage, what a rerun redoes), pipeline.py (the datatrove steps), executors.py
(local, Slurm, Ray), readers.py and filters.py (our steps), shards.py (split, mixture, token shards),
stats.py (the step table), corpus.py (offline corpora), datatrove_compat.py (datatrove internals)."""
