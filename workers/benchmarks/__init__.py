"""Benchmark runs (issue #14, docs/adr/0018-benchmark-runs.md): the runner that drives them through the gateway."""
