"""In-memory state of one emulator app: codes, tokens, control state and request log.

One :class:`EmulatorState` lives in ``app.extensions["qq_emulator"]``; two emulator apps
in one process never share anything. Every access goes through one lock because the
emulator is served by a multi-threaded WSGI server.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from broker.emulator.control import Control
from broker.emulator.ids import new_token, openid_for, unionid_for
from broker.emulator.settings import EmulatorSettings
from broker.emulator.users import EmulatorUser
from broker.emulator.wire import QQError

EXTENSION_KEY = "qq_emulator"
# "refresh_token仅一次有效" and the whole chain lasts about 3 months from login (§2.3).
REFRESH_CHAIN_SECONDS = 7_776_000
# The request log must never reveal credentials in test output.
MASKED_PARAMS = frozenset({"client_secret", "access_token", "refresh_token", "code"})
MASK = "***"


@dataclass
class _Code:
    user_id: str
    redirect_uri: str
    expires_at: float
    used: bool = False


@dataclass
class _AccessToken:
    user_id: str
    expires_at: float
    serial: int


@dataclass
class _RefreshToken:
    user_id: str
    chain_expires_at: float
    used: bool = False


@dataclass(frozen=True)
class Grant:
    """A freshly issued token pair and whom it belongs to."""

    user: EmulatorUser
    access_token: str
    refresh_token: str


def mask_params(params: Mapping[str, str]) -> dict[str, str]:
    """Copy ``params`` with secret values replaced by ``***`` (empty values stay empty)."""
    return {
        key: (MASK if key in MASKED_PARAMS and value else value) for key, value in params.items()
    }


class EmulatorState:
    """All mutable emulator state, guarded by one lock."""

    def __init__(
        self, settings: EmulatorSettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._lock = threading.Lock()
        self._users = {user.id: user for user in settings.users}
        self._serial = 0
        self._reset_locked()

    def _reset_locked(self) -> None:
        self._control = Control(cancel_mode=self.settings.cancel_mode)
        self._expired_upto: int | None = None
        self._codes: dict[str, _Code] = {}
        self._access: dict[str, _AccessToken] = {}
        self._refresh: dict[str, _RefreshToken] = {}
        self._log: list[dict[str, Any]] = []

    # -- users and identifiers ------------------------------------------------------

    @property
    def users(self) -> list[EmulatorUser]:
        return list(self._users.values())

    def user(self, user_id: str) -> EmulatorUser | None:
        return self._users.get(user_id)

    def openid(self, user: EmulatorUser) -> str:
        return openid_for(self.settings.app_id, user.id)

    def unionid(self, user: EmulatorUser) -> str:
        return user.unionid or unionid_for(self.settings.developer_id, user.id)

    # -- control and log ------------------------------------------------------------

    @property
    def control(self) -> Control:
        with self._lock:
            return self._control

    def update_control(self, update: Mapping[str, Any]) -> Control:
        """Merge ``update`` (validated) into the control state and return the result.

        ``expire_tokens: true`` expires every access token issued *so far*; tokens issued
        later (e.g. by the refresh a test wants to exercise) work normally.
        """
        with self._lock:
            self._control = self._control.merged(update, self._users.keys())
            if "expire_tokens" in update:
                self._expired_upto = self._serial if self._control.expire_tokens else None
            return self._control

    def reset(self) -> None:
        """Forget control settings, the request log, codes and tokens."""
        with self._lock:
            self._reset_locked()

    def record(
        self,
        endpoint: str,
        method: str,
        path: str,
        params: Mapping[str, str],
        query_names: Sequence[str] = (),
    ) -> None:
        """Append one QQ endpoint request to the log, secrets masked.

        ``query_names`` says which parameters came in the URL (rather than the
        body), so tests can check that no secret travels where logs can see it.
        """
        entry = {
            "endpoint": endpoint,
            "method": method,
            "path": path,
            "params": mask_params(params),
            "query_names": list(query_names),
        }
        with self._lock:
            self._log.append(entry)

    def requests(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._log)

    def clear_requests(self) -> None:
        with self._lock:
            self._log.clear()

    # -- codes and tokens -----------------------------------------------------------

    def issue_code(self, user: EmulatorUser, redirect_uri: str) -> str:
        """A single-use code bound to the authorize-time redirect_uri (§2.1, §2.2)."""
        code = new_token()
        with self._lock:
            expires_at = self._clock() + self.settings.code_ttl
            self._codes[code] = _Code(user.id, redirect_uri, expires_at)
        return code

    def exchange_code(self, code: str, redirect_uri: str) -> Grant:
        """Redeem a code: unknown/expired 100019, reused 100020, other redirect_uri 100010."""
        with self._lock:
            entry = self._codes.get(code)
            if entry is None or self._clock() >= entry.expires_at:
                raise QQError(100019)
            if entry.used:
                raise QQError(100020)
            if redirect_uri != entry.redirect_uri:  # byte for byte (§2.2, §10.6)
                raise QQError(100010)
            entry.used = True
            chain_expires_at = self._clock() + REFRESH_CHAIN_SECONDS
            return self._issue_locked(entry.user_id, chain_expires_at)

    def refresh(self, refresh_token: str) -> Grant:
        """Rotate a refresh token: it works once, the chain ends after ~3 months (§2.3)."""
        with self._lock:
            entry = self._refresh.get(refresh_token)
            if entry is None or entry.used or self._clock() >= entry.chain_expires_at:
                raise QQError(100021)
            entry.used = True
            return self._issue_locked(entry.user_id, entry.chain_expires_at)

    def _issue_locked(self, user_id: str, chain_expires_at: float) -> Grant:
        self._serial += 1
        access, refresh = new_token(), new_token()
        self._access[access] = _AccessToken(
            user_id, self._clock() + self.settings.expires_in, self._serial
        )
        self._refresh[refresh] = _RefreshToken(user_id, chain_expires_at)
        return Grant(self._users[user_id], access, refresh)

    def token_user(self, access_token: str) -> EmulatorUser:
        """The user behind an access token: unknown 100013, expired 100016 (§5.1, §8)."""
        with self._lock:
            entry = self._access.get(access_token)
            if entry is None:
                raise QQError(100013)
            forced = self._expired_upto is not None and entry.serial <= self._expired_upto
            if forced or self._clock() >= entry.expires_at:
                raise QQError(100016)
            return self._users[entry.user_id]
