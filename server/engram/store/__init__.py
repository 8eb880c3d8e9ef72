"""The store: engines, sessions, ORM models and queries.

Nothing in this package knows about gRPC; errors leave it as the typed
exceptions of :mod:`engram.store.errors`.
"""
