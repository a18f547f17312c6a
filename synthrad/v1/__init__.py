"""Generated protobuf/gRPC stubs of the synthrad v1 API (see protos/synthrad/v1; regenerate with scripts/gen_protos.sh)."""
