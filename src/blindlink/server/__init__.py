"""The linkage server: gRPC servicer, interceptors, background runs and lifecycle."""
