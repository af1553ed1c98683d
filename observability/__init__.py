"""Observability: logging now; tracing (Langfuse) and metrics (Prometheus) plug in at the same seams."""
