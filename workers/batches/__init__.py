"""The Batch API's runner: validation, feeding the batch lane, results into PostgreSQL, result files."""
