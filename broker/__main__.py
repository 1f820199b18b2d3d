"""``python -m broker`` is the ``qq-oidc-broker`` command."""

from broker.cli import main

raise SystemExit(main())
