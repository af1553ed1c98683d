"""Thin routers: each maps a request to a service call and the result to JSON, SSE or an error body."""
