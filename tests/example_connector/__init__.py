"""A minimal third-party connector, laid out as it would be in a package of its own.

``connector.py`` is the connector and its factory, ``emulator.py`` a plain OAuth 2.0
server standing in for the upstream, ``adapter.py`` what the contract kit needs to drive
them. A real package would register the factory in its own ``pyproject.toml``::

    [project.entry-points."qq_oidc_broker.connectors"]
    example = "qq_oidc_broker_example.connector:factory"

The tests here do not install anything: ``distinfo.py`` writes a throwaway
``*.dist-info`` with that entry point into a temporary directory on ``sys.path``, which
is all ``importlib.metadata`` looks at, so the real environment stays untouched.
"""
