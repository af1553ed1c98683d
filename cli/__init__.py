"""The ``gatehouse`` command and the ``gatehouse up`` supervisor: the one package that knows both the gateway
and the workers (it starts them). Nothing imports it."""
