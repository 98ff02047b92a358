"""Data stage: real offline corpora (corpus.py), document split and token shards (prepare.py, shards.py)."""
