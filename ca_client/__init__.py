"""Signet's client side: renewal timing, credential files on disk, and a thin client for the
CA's gRPC API (the `ca-client` command builds on these)."""
