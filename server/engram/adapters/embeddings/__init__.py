"""Embedding adapters: texts to vectors, from a model in this process or a remote API.

The :class:`~engram.adapters.embeddings.registry.EmbeddingRegistry` turns an
embedding handle (``local/all-minilm-l6-v2``, ``openai/text-embedding-3-small``,
``ollama/nomic-embed-text``) into an
:class:`~engram.adapters.embeddings.embedder.Embedder`.
"""
