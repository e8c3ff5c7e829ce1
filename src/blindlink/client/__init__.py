"""The party-side gRPC client."""
