"""A faithful local fake of graph.qq.com (QQ Connect) for development and tests.

See shared/qq-connect.md §8. The emulator keeps QQ's wire quirks (JSONP, form-encoded
token bodies, string ``expires_in``, HTTP 200 errors) so the connector is tested against
them, and adds a ``/_emulator/`` control plane for faults, latency and inspection.
"""

from broker.emulator.app import EmulatorSettings, create_emulator_app
from broker.emulator.users import EmulatorUser, default_users, load_users

__all__ = [
    "EmulatorSettings",
    "EmulatorUser",
    "create_emulator_app",
    "default_users",
    "load_users",
]
