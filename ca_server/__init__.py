"""Signet: a certificate authority for service mTLS, served as a gRPC service over mTLS.

Layers, from the inside out:

- ``ca_server.core``: the pure CA (profiles, CSR checks, policy, revocation, OCSP, CRL).
  It knows nothing of gRPC or SQL; it receives a store (``core.store.Store``), a clock and
  its keys.
- ``ca_server.store``: the SQLite implementation of that store.
- ``ca_server.api``: the gRPC adapter (authentication, error mapping, logging).
- ``ca_server.server`` / ``ca_server.cli``: wiring, the ``ca-server`` command.
"""

__version__ = "0.1.0"
