"""Modal apps: thin wrappers that deploy gpu_apps' model code (``modal deploy gpu_apps/modal_apps/<app>.py``).

Each module exposes ``app`` (a ``modal.App``), ``SETTINGS`` (the deployment settings it passes to Modal, which
``python -m gpu_apps.check`` verifies offline) and ``FUNCTIONS`` (what it registers)."""
