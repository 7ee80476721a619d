"""Imported by the `ca-client` command before grpc: gRPC's C core writes its own lines to the
terminal (a failed handshake on a wrong port, ...), repeating errors the command explains in
one sentence. The core reads GRPC_VERBOSITY when grpc is imported; a value already set wins,
so `GRPC_VERBOSITY=debug ca-client ...` still shows everything."""

import os

os.environ.setdefault("GRPC_VERBOSITY", "NONE")
