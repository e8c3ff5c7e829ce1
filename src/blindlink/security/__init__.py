"""Party identity material: Ed25519 signing keys, a development PKI and gRPC TLS credentials."""
