"""Serving: engine.py (continuous batching over kv_cache.py, fixed_shapes.py for graphs), protocol.py and
serving.py (the OpenAI API), api.py (the app), handoff.py, launch.py (`mai serve`), http.py (errors,
health, metrics, sockets), gateway.py and gateway_config.py (`mai gateway`), static/ (the chat page)."""
