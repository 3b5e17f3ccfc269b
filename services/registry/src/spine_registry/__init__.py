"""Agent catalogue, liveness and the HTTP-agent relay."""
