"""The CA's logic: pure Python over ``cryptography``, no gRPC, no SQL."""
