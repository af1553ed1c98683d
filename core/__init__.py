"""What the gateway and the workers share, and nothing else: configuration, the queue contract, the OpenAI
wire schemas, pricing and durations. It imports nothing from ``gateway``, ``workers``, ``observability`` or
``cli``; both sides import it (tests/unit/test_imports.py checks the rule)."""

__version__ = "0.1.0"
