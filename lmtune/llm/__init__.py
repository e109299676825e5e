"""Talking to language models: frozen encoders for embeddings (``lmtune.llm.embeddings``)."""
