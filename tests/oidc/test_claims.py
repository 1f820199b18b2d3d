"""Claim mapping rules of DESIGN.md "Claims", on the mapping functions themselves."""

from __future__ import annotations

import pytest

from broker.config import ClaimsConfig, ClientConfig
from broker.oidc.avatars import AvatarTokenExpired, AvatarUrls
from broker.oidc.claims import (
    clean_nickname,
    pairwise_subject,
    picture_claim,
    subject_for,
    user_claims,
)
from broker.oidc.models import EndUser

OPENID = "805CFCB3AFEA40CA7CE4B6D8A8668793"
OLD_AVATAR = f"http://thirdqq.qlogo.cn/qqapp/101364207/{OPENID}/40"
NEW_AVATAR = "http://thirdqq.qlogo.cn/g?b=oidb&k=abc&s=100&t=1"


def client(**options: object) -> ClientConfig:
    settings: dict[str, object] = {"redirect_uris": ("https://rp.example/cb",), **options}
    return ClientConfig(client_id="rp", client_secret="s" * 32, **settings)  # type: ignore[arg-type]


def user(picture: str = NEW_AVATAR, nickname: str = "张三") -> EndUser:
    return EndUser(OPENID, "UID_X", {"nickname": nickname, "picture": picture, "gender": "男"})


@pytest.mark.parametrize(
    ("url", "policy", "expected"),
    [
        (NEW_AVATAR, "https", "https://thirdqq.qlogo.cn/g?b=oidb&k=abc&s=100&t=1"),
        ("http://qzapp.qlogo.cn/qzapp/1/X/100", "https", None),
        (
            "http://qzapp.qlogo.cn/qzapp/1/X/100",
            "passthrough",
            "http://qzapp.qlogo.cn/qzapp/1/X/100",
        ),
        ("javascript:alert(1)", "passthrough", None),
        ("https://thirdqq.qlogo.cn/x", "https", "https://thirdqq.qlogo.cn/x"),
        (None, "https", None),
        ("http://thirdqq.qlogo.cn/" + "a" * 2000, "https", None),
    ],
)
def test_picture_policy(url: str | None, policy: str, expected: str | None) -> None:
    assert picture_claim(url, policy) == expected


def test_nickname_is_cleaned_of_control_and_bidi_characters() -> None:
    assert clean_nickname("张\u202e三\x00\n") == "张三"
    assert clean_nickname(42) == ""
    assert len(clean_nickname("长" * 1000)) == 128


def test_subject_strategies() -> None:
    salt = b"s" * 32
    assert subject_for(client(), user(), "openid", salt) == OPENID
    assert subject_for(client(subject="unionid"), user(), "openid", salt) == "UID_X"
    pairwise = subject_for(client(subject="pairwise"), user(), "openid", salt)
    assert pairwise == pairwise_subject("rp.example", OPENID, salt) and OPENID not in pairwise
    other_sector = client(subject="pairwise", redirect_uris=("https://other.example/cb",))
    assert subject_for(other_sector, user(), "openid", salt) != pairwise


def test_pairwise_client_never_sees_an_avatar_that_embeds_the_openid() -> None:
    cfg = ClaimsConfig()
    sub = pairwise_subject("rp.example", OPENID, b"s" * 32)
    leaky = user_claims(
        client=client(subject="pairwise"),
        user=user(OLD_AVATAR),
        scope="openid profile",
        subject=sub,
        claims_config=cfg,
    )
    assert "picture" not in leaky and leaky["nickname"] == "张三"
    fine = user_claims(
        client=client(subject="pairwise"),
        user=user(NEW_AVATAR),
        scope="openid profile",
        subject=sub,
        claims_config=cfg,
    )
    assert fine["picture"].startswith("https://thirdqq.qlogo.cn/g?")
    openid_client = user_claims(
        client=client(),
        user=user(OLD_AVATAR),
        scope="openid profile",
        subject=OPENID,
        claims_config=cfg,
    )
    assert OPENID in openid_client["picture"]


def test_optional_claims_follow_their_switches() -> None:
    plain = user_claims(
        client=client(),
        user=user(),
        scope="openid profile email",
        subject=OPENID,
        claims_config=ClaimsConfig(),
    )
    assert not {"email", "email_verified", "gender", "qq_openid"} & set(plain)
    opted = user_claims(
        client=client(email="synthetic", expose_qq_ids=True),
        user=user(),
        scope="openid profile email",
        subject=OPENID,
        claims_config=ClaimsConfig(gender=True),
    )
    assert opted["email"] == f"{OPENID}@qq-user.invalid" and opted["email_verified"] is False
    assert opted["gender"] == "male"
    assert opted["qq_openid"] == OPENID and opted["qq_unionid"] == "UID_X"


def test_proxy_policy_seals_qq_avatars_and_treats_the_rest_as_https() -> None:
    now = [1_000_000.0]
    avatars = AvatarUrls("https://id.example", b"k" * 32, lifetime=60, clock=lambda: now[0])
    proxied = picture_claim(OLD_AVATAR, "proxy", avatars)
    assert proxied is not None and proxied.startswith("https://id.example/avatar/")
    assert OPENID not in proxied and "qlogo" not in proxied
    assert avatars.open(proxied.rsplit("/", 1)[1]) == (OLD_AVATAR, 1_000_060)
    # Not a QQ avatar host: the https policy applies (kept if https, else dropped).
    assert picture_claim("https://cdn.example/a.png", "proxy", avatars) == (
        "https://cdn.example/a.png"
    )
    assert picture_claim("http://cdn.example/a.png", "proxy", avatars) is None
    assert picture_claim("javascript:alert(1)", "proxy", avatars) is None
    # Without a sealer (no app around), proxy is https.
    assert picture_claim(NEW_AVATAR, "proxy") == "https" + NEW_AVATAR[4:]
    now[0] += 60
    with pytest.raises(AvatarTokenExpired):
        avatars.open(proxied.rsplit("/", 1)[1])


def test_proxied_picture_reaches_pairwise_clients() -> None:
    avatars = AvatarUrls("https://id.example", b"k" * 32)
    claims = user_claims(
        client=client(subject="pairwise"),
        user=user(OLD_AVATAR),
        scope="openid profile",
        subject=pairwise_subject("rp.example", OPENID, b"s" * 32),
        claims_config=ClaimsConfig(picture="proxy"),
        avatars=avatars,
    )
    assert claims["picture"].startswith("https://id.example/avatar/")
    assert OPENID not in str(claims)
