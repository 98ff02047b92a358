"""The model: transformer.py (architecture), decode.py (KV-cache decoding), info.py (sizes), hf.py and gguf.py (transformers' and llama.cpp's key maps)."""
