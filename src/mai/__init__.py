"""mai: an in-house foundation-model stack — data, tokenizer, model, training, generation, export."""

__version__ = "0.1.0"
