"""``/_emulator/*``: the JSON control plane tests use to steer and inspect the emulator.

Not part of graph.qq.com. Answers are ordinary JSON (not QQ-shaped) and never logged in
the request log, which records only QQ endpoint traffic.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from broker.emulator.common import current_state
from broker.emulator.control import ControlError

bp = Blueprint("qq_emulator_admin", __name__, url_prefix="/_emulator")


def _bad_request(message: str) -> tuple[Response, int]:
    return jsonify({"error": message}), 400


@bp.get("/control")
def get_control() -> Response:
    return jsonify(current_state().control.to_json())


@bp.post("/control")
def post_control() -> Response | tuple[Response, int]:
    """Merge a JSON object into the control state; 400 names the offending key."""
    update: Any = request.get_json(silent=True)
    if not isinstance(update, dict):
        return _bad_request("body must be a JSON object")
    try:
        control = current_state().update_control(update)
    except ControlError as exc:
        return _bad_request(str(exc))
    return jsonify(control.to_json())


@bp.post("/reset")
def reset() -> Response:
    """Back to the settings' defaults: control, request log, codes and tokens."""
    state = current_state()
    state.reset()
    return jsonify(state.control.to_json())


@bp.get("/requests")
def get_requests() -> Response:
    return jsonify(current_state().requests())


@bp.delete("/requests")
def delete_requests() -> Response:
    current_state().clear_requests()
    return jsonify([])


@bp.get("/users")
def users() -> Response:
    """Users with this app's openid and (if enabled) unionid: the ``sub`` tests expect."""
    state = current_state()
    enabled = state.settings.unionid_enabled
    return jsonify(
        [
            {
                "id": user.id,
                "nickname": user.nickname,
                "openid": state.openid(user),
                "unionid": state.unionid(user) if enabled else None,
                "has_qq_avatar_100": user.has_qq_avatar_100,
                "avatar_key": user.avatar_key,
            }
            for user in state.users
        ]
    )
