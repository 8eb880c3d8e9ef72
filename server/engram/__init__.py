"""Engram: a gRPC server for stateful LLM agents with long-term memory."""

__version__ = "0.1.0"
