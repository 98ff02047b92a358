"""Serving: the continuous-batching engine, the OpenAI-compatible server, the chat page and the gateway."""
