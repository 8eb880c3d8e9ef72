"""Generated protobuf and gRPC code for the engram.v1 package. Do not edit by hand;
run scripts/gen-protos."""
