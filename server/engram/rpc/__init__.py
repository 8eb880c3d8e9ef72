"""The gRPC process: server assembly, health, reflection and graceful drain."""
