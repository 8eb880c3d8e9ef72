"""Servicers: one module per gRPC service, translating protos to service calls and back."""
