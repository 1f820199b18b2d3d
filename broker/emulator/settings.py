"""Configuration of one emulated QQ Connect app (qq-connect.md §8 "Registry")."""

from __future__ import annotations

from dataclasses import dataclass, field

from broker.emulator.users import EmulatorUser, default_users

CANCEL_MODES = ("close", "redirect")
MAX_CLOCK_SKEW_SECONDS = 10 * 365 * 86_400


@dataclass
class EmulatorSettings:
    """The app registered at the emulated QQ, plus the emulator's own knobs.

    ``callbacks`` are full callback URLs: QQ compares host+path exactly and ignores the
    query (§2.7). ``cancel_mode="close"`` is real PC QQ (the window closes, no redirect,
    §2.1); ``"redirect"`` is the old WAP flow with ``usercancel=1``. Real QQ refuses
    callbacks with ports or ``localhost``; ``allow_loopback_ports`` lets loopback
    callbacks with a port through so local development works.
    """

    app_id: str
    app_key: str
    callbacks: list[str]
    users: list[EmulatorUser] = field(default_factory=default_users)
    unionid_enabled: bool = False
    developer_id: str = "dev-account"
    cancel_mode: str = "close"
    expires_in: int = 5184000
    code_ttl: int = 600
    allow_loopback_ports: bool = True
    #: Seconds the emulated graph.qq.com's clock (its ``Date`` header) runs ahead of this
    #: machine's; negative is behind. Lets tests play a host whose clock is off (doctor).
    clock_skew_seconds: int = 0

    def validate(self) -> None:
        """Fail fast on settings that would make the emulator behave nonsensically."""
        if not self.app_id:
            raise ValueError("emulator: app_id must not be empty")
        if not self.app_key:
            raise ValueError("emulator: app_key must not be empty")
        if not self.users:
            raise ValueError("emulator: at least one user is required")
        ids = [user.id for user in self.users]
        if len(set(ids)) != len(ids):
            raise ValueError("emulator: user ids must be unique")
        if self.cancel_mode not in CANCEL_MODES:
            raise ValueError(f"emulator: cancel_mode must be one of {', '.join(CANCEL_MODES)}")
        if self.expires_in <= 0 or self.code_ttl <= 0:
            raise ValueError("emulator: expires_in and code_ttl must be positive")
        if abs(self.clock_skew_seconds) > MAX_CLOCK_SKEW_SECONDS:
            raise ValueError("emulator: clock_skew_seconds must be within +-10 years")
