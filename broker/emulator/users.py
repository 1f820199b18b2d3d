"""Emulated QQ users: the people who can "log in" on the emulator's login page.

Users are plain data; their per-app identifiers (openid, unionid) are derived in
:mod:`broker.emulator.ids` so the same user list works for any app id.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DEFAULT_USERS_FILE = Path(__file__).with_name("default_users.yaml")

# The k=… value lands unencoded in thirdqq avatar URLs (§4), so keep it URL-safe.
_AVATAR_KEY_RE = re.compile(r"^[A-Za-z0-9._~-]+$")
_KNOWN_KEYS = frozenset({"id", "nickname", "gender", "has_qq_avatar_100", "avatar_key", "unionid"})
#: QQ answers 男 when the user set nothing (§4), so that is the default here too.
GENDERS = ("男", "女")
_UNIONID_RE = re.compile(r"^UID_[0-9A-F]{32}$")


@dataclass
class EmulatorUser:
    """One QQ account known to the emulator.

    ``has_qq_avatar_100=False`` models "不是所有的用户都拥有" (§4): such a user's
    ``figureurl_qq_2`` carries the 40 px URL. An empty ``avatar_key`` is replaced by a
    stable one derived from ``id`` so avatar URLs never change between runs. A set
    ``unionid`` pins the user's UnionID (e.g. to match one seen in another app of the
    same developer account); otherwise it is derived. Either way QQ only reveals it to
    apps with UnionID enabled (§6).
    """

    id: str
    nickname: str
    has_qq_avatar_100: bool = True
    avatar_key: str = ""
    gender: str = "男"
    unionid: str = ""

    def __post_init__(self) -> None:
        if not self.avatar_key:
            self.avatar_key = derive_avatar_key(self.id)


def derive_avatar_key(user_id: str) -> str:
    """A stable, URL-safe stand-in for QQ's opaque avatar key (k=…, §4)."""
    digest = hashlib.sha256(b"qq-emulator-avatar:" + user_id.encode("utf-8")).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")[:32]


def load_users(path: Path) -> list[EmulatorUser]:
    """Load users from a YAML list of ``{id, nickname, gender?, has_qq_avatar_100?,
    avatar_key?, unionid?}``.

    Every problem raises ``ValueError`` naming the file and the entry, because this is
    what a developer edits by hand for ``qq-oidc-broker emulator --users FILE``.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"{path}: cannot read users file: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: users file is not valid UTF-8") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: invalid YAML: {exc}") from exc
    return parse_users(data, source=str(path))


def parse_users(data: Any, source: str) -> list[EmulatorUser]:
    """Validate already-parsed YAML/JSON data; ``source`` names it in error messages."""
    if not isinstance(data, list) or not data:
        raise ValueError(f"{source}: expected a non-empty list of users")
    users = [
        _parse_user(entry, f"{source}: user #{index}") for index, entry in enumerate(data, start=1)
    ]
    seen: set[str] = set()
    for user in users:
        if user.id in seen:
            raise ValueError(f"{source}: duplicate user id {user.id!r}")
        seen.add(user.id)
    return users


def _parse_user(entry: Any, where: str) -> EmulatorUser:
    """Turn one mapping into an :class:`EmulatorUser`, rejecting anything ambiguous."""
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a mapping with 'id' and 'nickname'")
    unknown = sorted(str(key) for key in entry if key not in _KNOWN_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}")
    user_id = entry.get("id")
    if not isinstance(user_id, str) or not user_id.strip():
        raise ValueError(f"{where}: 'id' must be a non-empty string (quote numbers)")
    where = f"{where} ({user_id!r})"
    if "nickname" not in entry:
        raise ValueError(f"{where}: 'nickname' is required (use \"\" for none)")
    nickname = entry["nickname"]
    if not isinstance(nickname, str):
        raise ValueError(f"{where}: 'nickname' must be a string (use \"\" for none)")
    has_avatar = entry.get("has_qq_avatar_100", True)
    if not isinstance(has_avatar, bool):
        raise ValueError(f"{where}: 'has_qq_avatar_100' must be true or false")
    avatar_key = entry.get("avatar_key", "")
    if not isinstance(avatar_key, str) or (avatar_key and not _AVATAR_KEY_RE.match(avatar_key)):
        raise ValueError(f"{where}: 'avatar_key' must be a URL-safe string [A-Za-z0-9._~-]")
    gender = entry.get("gender", "男")
    if gender not in GENDERS:
        raise ValueError(f"{where}: 'gender' must be 男 or 女")
    unionid = entry.get("unionid", "")
    if not isinstance(unionid, str) or (unionid and not _UNIONID_RE.match(unionid)):
        raise ValueError(f"{where}: 'unionid' must look like UID_ plus 32 upper-case hex")
    return EmulatorUser(user_id, nickname, has_avatar, avatar_key, gender, unionid)


def default_users() -> list[EmulatorUser]:
    """The shipped test users (``default_users.yaml``), a fresh list on every call."""
    return load_users(DEFAULT_USERS_FILE)
