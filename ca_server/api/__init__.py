"""The gRPC adapter: request parsing, authentication, error mapping and RPC logging."""
