"""Gateway: HTTP, auth, limits, enqueue, stream relay."""
