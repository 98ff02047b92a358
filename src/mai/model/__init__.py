"""The model: transformer.py (architecture), generate.py (decoding), info.py (sizes), hf.py (transformers interop)."""
