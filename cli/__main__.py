"""``python -m cli …`` is ``gatehouse …`` (how the supervisor starts its children)."""

from cli.main import main

main()
