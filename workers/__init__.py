"""Workers: the arq worker, the queue contract, and the backends that run requests."""
