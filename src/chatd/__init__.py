"""chatd: a self-hosted OpenAI Chat Completions server on a local GGUF model."""

__version__ = "0.1.0"
