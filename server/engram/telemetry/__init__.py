"""Telemetry: the OpenTelemetry meter provider and the instruments Engram records.

Nothing in here is needed to serve requests.  The store and the RPC layer only
expose hooks (such as the observed connection pool); this package turns them
into metrics so that the server runs unchanged with telemetry switched off.
"""
