"""WSGI entry point ``broker.wsgi:app`` for any WSGI server.

The config comes from ``BROKER_CONFIG`` (else ``./config.yaml``).
"""

from broker.app import create_app
from broker.config import load_config, resolve_config_path

app = create_app(load_config(resolve_config_path(None)))
