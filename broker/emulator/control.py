"""The test-control state of the emulator: auto-login, cancel mode, latency, faults.

Tests drive it over HTTP (``/_emulator/control``) because the emulator usually runs as a
separate server; validation is strict so a typo in a test fails loudly instead of
silently testing nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass, field, replace
from typing import Any

from broker.emulator.settings import CANCEL_MODES

LATENCY_ENDPOINTS = ("authorize", "token", "me", "get_user_info")
FAULT_ENDPOINTS = ("token", "me", "get_user_info")
MAX_LATENCY_MS = 120_000

# Faults valid everywhere, and the ones that only make sense for one endpoint's shape.
COMMON_FAULTS = frozenset(
    {
        "http_500",
        "html",
        "jsonp_error",
        "empty",
        "garbage",
        "trailing_whitespace",
        "oversized",
    }
)
ENDPOINT_FAULTS: Mapping[str, frozenset[str]] = {
    "token": COMMON_FAULTS
    | {"omit_openid", "expires_in_int", "ignore_fmt", "no_access_token", "openid_null"},
    "me": COMMON_FAULTS
    | {
        "ignore_fmt",
        "other_client_id",
        "openid_null",
        "openid_missing",
        "duplicate_openid",
        "paren_in_value",
    },
    "get_user_info": COMMON_FAULTS | {"fixed_profile"},
}
ERROR_FAULT_PREFIX = "error:"
# Faults that carry a value: ``openid:<value>`` and friends (security checklist UP-06,
# UP-08, UP-09, UP-12, UP-16). The value is everything after the first colon, may be empty,
# and is sent as is, so tests can play a hostile or buggy upstream.
VALUE_FAULT_PREFIXES: Mapping[str, tuple[str, ...]] = {
    "token": ("openid:",),
    "me": ("openid:", "unionid:"),
    "get_user_info": ("nickname:", "figureurl:"),
}
MAX_FAULT_VALUE_CHARS = 65_536


class ControlError(ValueError):
    """A control update was rejected; the message says which key and why."""


@dataclass(frozen=True)
class Control:
    """A snapshot of the control state (immutable: updates build a new one)."""

    cancel_mode: str
    auto_login: str | None = None
    latency_ms: int | dict[str, int] = 0
    faults: dict[str, str] = field(default_factory=dict)
    expire_tokens: bool = False

    def to_json(self) -> dict[str, Any]:
        """The shape ``GET /_emulator/control`` returns (same keys a POST accepts)."""
        latency = dict(self.latency_ms) if isinstance(self.latency_ms, dict) else self.latency_ms
        return {
            "auto_login": self.auto_login,
            "cancel_mode": self.cancel_mode,
            "latency_ms": latency,
            "faults": dict(self.faults),
            "expire_tokens": self.expire_tokens,
        }

    def latency_seconds(self, endpoint: str) -> float:
        """Configured delay for ``endpoint`` (an int applies to every endpoint)."""
        if isinstance(self.latency_ms, dict):
            return self.latency_ms.get(endpoint, 0) / 1000.0
        return self.latency_ms / 1000.0

    def fault(self, endpoint: str) -> str | None:
        """The fault injected into ``endpoint``, if any."""
        return self.faults.get(endpoint)

    def merged(self, update: Mapping[str, Any], user_ids: Set[str]) -> Control:
        """Apply a top-level merge: each given key replaces its old value entirely."""
        unknown = sorted(set(update) - set(self.to_json()))
        if unknown:
            raise ControlError(f"unknown control key(s): {', '.join(unknown)}")
        result = self
        if "auto_login" in update:
            result = replace(result, auto_login=_auto_login(update["auto_login"], user_ids))
        if "cancel_mode" in update:
            result = replace(result, cancel_mode=_cancel_mode(update["cancel_mode"]))
        if "latency_ms" in update:
            result = replace(result, latency_ms=_latency(update["latency_ms"]))
        if "faults" in update:
            result = replace(result, faults=_faults(update["faults"]))
        if "expire_tokens" in update:
            if not isinstance(update["expire_tokens"], bool):
                raise ControlError("expire_tokens must be true or false")
            result = replace(result, expire_tokens=update["expire_tokens"])
        return result


def _auto_login(value: Any, user_ids: Set[str]) -> str | None:
    if value is None:
        return None
    if isinstance(value, str) and (value == "cancel" or value in user_ids):
        return value
    raise ControlError(f"auto_login must be null, 'cancel' or a user id, not {value!r}")


def _cancel_mode(value: Any) -> str:
    if value in CANCEL_MODES:
        return str(value)
    raise ControlError(f"cancel_mode must be one of {', '.join(CANCEL_MODES)}")


def _milliseconds(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_LATENCY_MS:
        raise ControlError(f"{key} must be an integer between 0 and {MAX_LATENCY_MS}")
    return value


def _latency(value: Any) -> int | dict[str, int]:
    if isinstance(value, dict):
        unknown = sorted(str(key) for key in value if key not in LATENCY_ENDPOINTS)
        if unknown:
            raise ControlError(f"latency_ms: unknown endpoint(s) {', '.join(unknown)}")
        return {str(key): _milliseconds(ms, f"latency_ms.{key}") for key, ms in value.items()}
    return _milliseconds(value, "latency_ms")


def _faults(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ControlError("faults must be an object {endpoint: fault}")
    faults: dict[str, str] = {}
    for endpoint, fault in value.items():
        if endpoint not in ENDPOINT_FAULTS:
            raise ControlError(f"faults: unknown endpoint {endpoint!r}")
        if fault is None:
            continue
        if not isinstance(fault, str) or not _fault_allowed(endpoint, fault):
            allowed = ", ".join(sorted(ENDPOINT_FAULTS[endpoint]))
            valued = "".join(f", {prefix}<value>" for prefix in VALUE_FAULT_PREFIXES[endpoint])
            shown = fault[:80] + "..." if isinstance(fault, str) and len(fault) > 80 else fault
            raise ControlError(
                f"faults.{endpoint}: {shown!r} is not one of {allowed}, error:<int code>{valued}"
            )
        faults[endpoint] = fault
    return faults


def _fault_allowed(endpoint: str, fault: str) -> bool:
    if fault in ENDPOINT_FAULTS[endpoint] or error_fault_code(fault) is not None:
        return True
    prefixes = VALUE_FAULT_PREFIXES.get(endpoint, ())
    return (
        any(fault.startswith(prefix) for prefix in prefixes) and len(fault) <= MAX_FAULT_VALUE_CHARS
    )


def fault_value(fault: str | None, prefix: str) -> str | None:
    """The value of a ``<prefix><value>`` fault (``openid:``, ``nickname:``...), else None."""
    if fault is None or not fault.startswith(prefix):
        return None
    return fault[len(prefix) :]


def error_fault_code(fault: str | None) -> int | None:
    """The QQ code of an ``error:<code>`` fault, or None for any other value."""
    if fault is None or not fault.startswith(ERROR_FAULT_PREFIX):
        return None
    try:
        return int(fault[len(ERROR_FAULT_PREFIX) :])
    except ValueError:
        return None
