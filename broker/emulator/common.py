"""Helpers shared by the emulator's views: state lookup, parameters, logging, latency."""

from __future__ import annotations

import time
from typing import cast

from flask import current_app, request

from broker.emulator.state import EXTENSION_KEY, EmulatorState


def current_state() -> EmulatorState:
    """This app's state (per app instance, never a module global)."""
    return cast(EmulatorState, current_app.extensions[EXTENSION_KEY])


def merged_params() -> dict[str, str]:
    """Query plus form body, the body winning on clashes (§2.2: GET query or POST form)."""
    params = request.args.to_dict()
    params.update(request.form.to_dict())
    return params


def begin(endpoint: str, latency_key: str, params: dict[str, str]) -> EmulatorState:
    """Log the request, then apply the configured latency; returns the state."""
    state = current_state()
    state.record(endpoint, request.method, request.path, params, sorted(request.args))
    delay = state.control.latency_seconds(latency_key)
    if delay > 0:
        time.sleep(delay)
    return state
