"""The model: transformer.py (architecture), decode.py (KV-cache decoding), info.py (sizes), hf.py (transformers key map)."""
