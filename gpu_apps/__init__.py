"""GPU-oriented example applications served by Gatehouse."""
