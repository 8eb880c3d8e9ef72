"""LLM provider adapters: one neutral call shape, translated to each provider's SDK."""
