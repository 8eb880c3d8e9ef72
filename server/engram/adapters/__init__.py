"""Adapters to what Engram does not own: LLM providers, later embeddings and event logs."""
