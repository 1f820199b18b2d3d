"""Hypothesis properties for every parser of untrusted input.

QQ's bodies (form, JSONP, JSON) and identifiers (checklist UP-06, UP-08), QQ profile
values (UP-16), the ``claims`` and other authorization request parameters (DO-02),
``id_token_hint`` (IT-05), configuration values, error descriptions and locales.

Profiles: ``HYPOTHESIS_PROFILE=ci`` (default: a moderate number of examples per property,
the whole file in seconds) or ``long`` (twenty times as many: minutes). The crashes these
properties found are pinned as plain regression tests at the end.
"""

from __future__ import annotations

import copy
import io
import json
import os
import re
import string
import unicodedata
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
import requests
import urllib3
from authlib.oauth2 import OAuth2Error
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from broker.config import Config, ConfigError, parse_config
from broker.connectors.base import Identity, UpstreamError
from broker.connectors.qq import QQBodyError, QQConnector, _identifier, parse_qq_body
from broker.keys import KeyRing
from broker.oidc.claims import MAX_NICKNAME_CHARS, clean_nickname, picture_claim
from broker.oidc.errors import safe_description
from broker.oidc.logout import BrokerEndSessionEndpoint
from broker.oidc.request_policy import (
    KNOWN,
    _valid_claims_request,
    check_authorization_parameters,
)
from broker.web.messages import pick_locale

# --------------------------------------------------------------------------- profiles

settings.register_profile(
    "ci",
    deadline=None,
    database=None,  # nothing written into the checkout; failures print a reproducer
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("long", parent=settings.get_profile("ci"))
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
SCALE = {"ci": 1, "long": 20}
if PROFILE not in SCALE:
    raise pytest.UsageError(f"HYPOTHESIS_PROFILE must be one of {sorted(SCALE)}, not {PROFILE!r}")


def examples(count: int) -> settings:
    """The active profile with ``count`` examples (times the profile's scale)."""
    return settings(settings.get_profile(PROFILE), max_examples=count * SCALE[PROFILE])


# --------------------------------------------------------------------------- strategies

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=15,
)
#: Strings biased towards the characters QQ's formats are made of.
qq_text = st.text(
    alphabet=st.sampled_from(list('callback(){}[]";:,=&%+ \t\r\n\ufeff019aefnlrtu\\'))
    | st.characters(),
    max_size=60,
)
#: Whitespace that ``\s`` and ``str.strip`` both know, JSON's own and the rest.
spacing = st.text(alphabet=" \t\r\n\x0b\x0c\x1c\xa0\u3000", max_size=4)


@st.composite
def jsonp(draw: st.DrawFn, inner: st.SearchStrategy[str]) -> str:
    s = [draw(spacing) for _ in range(6)]
    semicolon = ";" if draw(st.booleans()) else ""
    return f"{s[0]}callback{s[1]}({s[2]}{draw(inner)}{s[3]}){s[4]}{semicolon}{s[5]}"


untrusted_bodies = st.one_of(
    st.text(),
    qq_text,
    jsonp(qq_text),
    st.binary(max_size=200).map(lambda raw: raw.decode("latin-1")),
    json_values.map(json.dumps),
    jsonp(json_values.map(json.dumps)),
)


def dumps_any_style(draw: Callable[..., Any], value: Any) -> str:
    indent = draw(st.none() | st.integers(0, 3) | st.sampled_from(["\t", "\n", " \n"]))
    return json.dumps(value, indent=indent, ensure_ascii=draw(st.booleans()))


# --------------------------------------------------------------------------- QQ bodies

BODY_ERRORS = {
    "empty body",
    "duplicate key in JSON",
    "JSON nested too deeply",
    "malformed JSON",
    "JSON is not an object",
    "neither JSON, JSONP nor form-encoded",
    "duplicate key in form body",
}


@examples(400)
@given(text=untrusted_bodies)
@example(text="[" * 100_000)
@example(text='{"a":' * 50_000)
@example(text="callback(" + '{"a":' * 5_000 + ")")
@example(text='callback( {"a":1} ); callback( {"b":2} );')
@example(text="\ufeff")
@example(text='{"openid": NaN}')
def test_parse_qq_body_raises_only_its_own_error(text: str) -> None:
    """Any text: a dict with string keys, or QQBodyError with a fixed ASCII message that
    carries no chained exception (a JSONDecodeError would hold the body, tokens and all)."""
    try:
        body = parse_qq_body(text)
    except QQBodyError as err:
        assert str(err) in BODY_ERRORS
        assert err.__cause__ is None and err.__context__ is None
    else:
        assert isinstance(body, dict)
        assert all(isinstance(key, str) for key in body)


json_objects = st.dictionaries(
    st.text(max_size=12) | st.sampled_from([")", ");", "})", "callback("]),
    json_values | qq_text,
    max_size=6,
)


@examples(200)
@given(data=st.data(), obj=json_objects, bom=st.booleans())
def test_jsonp_with_any_spacing_round_trips(
    data: st.DataObject, obj: dict[str, Any], bom: bool
) -> None:
    text = data.draw(jsonp(st.just(dumps_any_style(data.draw, obj))))
    assert parse_qq_body("\ufeff" * bom + text) == obj


@examples(200)
@given(data=st.data(), obj=json_objects, bom=st.booleans(), before=spacing, after=spacing)
def test_json_round_trips(
    data: st.DataObject, obj: dict[str, Any], bom: bool, before: str, after: str
) -> None:
    text = before + dumps_any_style(data.draw, obj) + after
    assert parse_qq_body("\ufeff" * bom + text) == obj


form_keys = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,63}", fullmatch=True)
form_values = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=30)


@examples(200)
@given(fields=st.dictionaries(form_keys, form_values, min_size=1, max_size=64))
def test_form_round_trips_with_values_stripped(fields: dict[str, str]) -> None:
    assert parse_qq_body(urlencode(fields)) == {k: v.strip() for k, v in fields.items()}


@examples(150)
@given(
    key=st.text(max_size=8),
    first=json_scalars,
    second=json_scalars,
    depth=st.integers(0, 3),
    wrap=st.booleans(),
)
def test_duplicate_json_keys_at_any_depth_are_refused(
    key: str, first: Any, second: Any, depth: int, wrap: bool
) -> None:
    quoted = json.dumps(key)
    text = "{" + f"{quoted}: {json.dumps(first)}, {quoted}: {json.dumps(second)}" + "}"
    for _ in range(depth):
        text = '{"outer": ' + text + "}"
    if wrap:
        text = f"callback( {text} );"
    with pytest.raises(QQBodyError):
        parse_qq_body(text)


@examples(100)
@given(key=form_keys, values=st.lists(form_values, min_size=2, max_size=3))
def test_duplicate_form_keys_are_refused(key: str, values: list[str]) -> None:
    with pytest.raises(QQBodyError):
        parse_qq_body(urlencode([(key, v) for v in values]))


@examples(30)
@given(fields=st.dictionaries(form_keys, form_values, min_size=65, max_size=80))
def test_more_than_64_form_fields_are_refused(fields: dict[str, str]) -> None:
    with pytest.raises(QQBodyError):
        parse_qq_body(urlencode(fields))


@examples(150)
@given(value=json_values.filter(lambda v: not isinstance(v, dict)), wrap=st.booleans())
def test_json_that_is_not_an_object_is_refused(value: Any, wrap: bool) -> None:
    text = json.dumps(value)
    with pytest.raises(QQBodyError):
        parse_qq_body(f"callback( {text} );" if wrap else text)


# --------------------------------------------------------------------------- identifiers

ID_CHARS = frozenset(string.ascii_letters + string.digits + "_-")
#: What a buggy upstream or library produces from a missing value (UP-06).
PLACEHOLDERS = {"none", "null", "nil", "undefined", "nan"}
VALID_ID = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)


def acceptable_id(value: object) -> bool:
    """The broker may key an account on it: 1-64 of [A-Za-z0-9_-], not a placeholder."""
    return (
        isinstance(value, str)
        and 1 <= len(value) <= 64
        and set(value) <= ID_CHARS
        and value.lower() not in PLACEHOLDERS
    )


@st.composite
def near_miss_ids(draw: st.DrawFn) -> str:
    """A valid identifier with one character inserted or replaced, or cut to 65."""
    base = draw(VALID_ID)
    odd = draw(st.characters() | st.sampled_from(list("\n\x00 .:/+=١ａ")))
    at = draw(st.integers(0, len(base)))
    return draw(
        st.sampled_from(
            [
                base[:at] + odd + base[at:],
                base[:at] + odd + base[at + 1 :],
                (base * 65)[:65],
                base + "\n",
            ]
        )
    )


identifiers = st.one_of(
    VALID_ID,
    near_miss_ids(),
    st.text(max_size=70),
    st.sampled_from(sorted(PLACEHOLDERS)).flatmap(
        lambda word: st.lists(st.booleans(), min_size=len(word), max_size=len(word)).map(
            lambda upper: "".join(c.upper() if u else c for c, u in zip(word, upper, strict=True))
        )
    ),
    st.sampled_from(["", "None", "NULL", "A" * 64, "A" * 65, "１２３", "UID_" + "F" * 32]),
    st.integers(),
    st.none(),
    st.booleans(),
    st.floats(),
    st.lists(st.text(max_size=5), max_size=2),
    st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=1),
)


@examples(500)
@given(value=identifiers)
def test_identifier_check_accepts_exactly_the_allowed_shape(value: Any) -> None:
    checked = _identifier(value)
    assert checked == (value if acceptable_id(value) else None)


# --------------------------------------------------------------------------- QQ connector

APP_ID = "101000001"
APP_KEY = "feedface" * 4
ACCESS_TOKEN = "D7BF5C1A0E9B4F26A3C8D1E7B5F0A38F"
CODE = "D8B56CC1DB5D416A32D7D383FEDF7C07"
QQ_PATHS = {"/oauth2.0/token": "token", "/oauth2.0/me": "me", "/user/get_user_info": "info"}


class CannedQQ:
    """Stands in for the connector's requests.Session: each QQ endpoint answers with the
    bytes it was given (status 200, as QQ does even for errors)."""

    def __init__(self, bodies: dict[str, bytes]) -> None:
        self.bodies = bodies
        self.calls: list[str] = []

    def request(self, method: str, url: str, **_kwargs: Any) -> requests.Response:
        name = QQ_PATHS[urlsplit(url).path]
        self.calls.append(name)
        body = self.bodies[name]
        response = requests.Response()
        response.status_code = 200
        response.headers["Content-Length"] = str(len(body))
        response.raw = urllib3.HTTPResponse(
            body=io.BytesIO(body), preload_content=False, status=200
        )
        return response

    def close(self) -> None:
        pass


def connector(bodies: dict[str, bytes]) -> QQConnector:
    session: Any = CannedQQ(bodies)
    return QQConnector(
        app_id=APP_ID, app_key=APP_KEY, base_url="https://qq.invalid", session=session
    )


def utf8(text: str) -> bytes:
    """UTF-8, lone surrogates included (as a broken upstream would send them)."""
    return text.encode("utf-8", "surrogatepass")


def wire(draw: Callable[..., Any], fields: dict[str, Any]) -> bytes:
    """A QQ body for ``fields``: JSON, JSONP or (flat values only) form, or plain junk."""
    style = draw(st.sampled_from(["json", "json", "jsonp", "jsonp", "form", "junk"]))
    if style == "junk":
        junk: bytes = draw(st.binary(max_size=80) | qq_text.map(utf8))
        return junk
    if style == "form" and all(isinstance(v, str) for v in fields.values()):
        return urlencode(fields, errors="surrogatepass").encode()
    text = json.dumps(fields, ensure_ascii=draw(st.booleans()))
    return utf8(f"callback( {text} );\n" if style == "jsonp" else text)


def optional(draw: Callable[..., Any], fields: dict[str, st.SearchStrategy[Any]]) -> dict[str, Any]:
    return {name: draw(strategy) for name, strategy in fields.items() if draw(st.booleans())}


tokens = (
    st.sampled_from([ACCESS_TOKEN, "x" * 513, "", "a b"]) | st.text(max_size=20) | st.integers()
)
client_ids = st.sampled_from([APP_ID, int(APP_ID), "101000002", "", None])
error_codes = st.sampled_from([100016, "100016", 100020, -1, "x", None, True, 0])


OPENID = "805CFCB3AFEA40CA7CE4B6D8A8668793"
UNIONID = "UID_3C62A0D5E1F24B6C8D9E0F1A2B3CF497"
#: Good answers (qq-connect.md section 3), to be spoiled one field at a time.
GOOD: dict[str, dict[str, Any]] = {
    "token": {"access_token": ACCESS_TOKEN, "expires_in": "7776000",
              "refresh_token": "7D47A2C9E1B04F58B6D3C0E8A9F1707F", "openid": OPENID},
    "me": {"client_id": APP_ID, "openid": OPENID, "unionid": UNIONID},
    "info": {"ret": 0, "msg": "", "nickname": "QQ", "gender": "男",
             "figureurl_qq_1": "http://thirdqq.qlogo.cn/g?b=oidb&k=abc&s=40"},
}  # fmt: skip
SPOILERS: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "token": {
        "access_token": tokens,
        "refresh_token": tokens,
        "expires_in": st.sampled_from(["5184000", 7776000, "-1", "x", None]),
        "openid": identifiers,
        "client_id": client_ids,
        "error": error_codes,
        "error_description": qq_text,
        "code": error_codes,
        "msg": qq_text,
    },
    "me": {
        "client_id": client_ids,
        "openid": identifiers,
        "unionid": identifiers,
        "error": error_codes,
        "error_description": qq_text,
    },
    "info": {
        "ret": error_codes | st.just(0),
        "msg": qq_text,
        "nickname": qq_text | st.integers(),
        "is_lost": error_codes,
        "figureurl_qq_1": qq_text,
        "figureurl_qq_2": qq_text,
        "gender": st.sampled_from(["男", "女", 1]),
    },
}


@st.composite
def qq_answers(draw: st.DrawFn) -> dict[str, bytes]:
    """Per endpoint: a good answer with one field changed, dropped or left alone, or a
    random mix of fields; then encoded as JSON, JSONP, form or junk."""
    answers = {}
    for endpoint, spoilers in SPOILERS.items():
        if draw(st.booleans()):
            fields = dict(GOOD[endpoint])
            name = draw(st.sampled_from(sorted(spoilers)))
            action = draw(st.sampled_from(["set", "drop", "keep"]))
            if action == "set":
                fields[name] = draw(spoilers[name])
            elif action == "drop":
                fields.pop(name, None)
        else:
            fields = optional(draw, spoilers)
        answers[endpoint] = wire(draw, fields)
    return answers


def assert_no_secrets_in(err: UpstreamError) -> None:
    for text in (str(err), err.hint, err.upstream_message or ""):
        for secret in (APP_KEY, ACCESS_TOKEN, CODE):
            assert secret not in text


@examples(400)
@given(answers=qq_answers(), want_unionid=st.booleans())
def test_exchange_fails_closed_on_any_upstream_answer(
    answers: dict[str, bytes], want_unionid: bool
) -> None:
    """UP-06/UP-08: whatever QQ answers, an Identity carries identifiers of the allowed
    shape, or an UpstreamError is raised that names no secret; nothing else."""
    try:
        identity = connector(answers).exchange(
            code=CODE, redirect_uri="https://broker.invalid/qq/callback", want_unionid=want_unionid
        )
    except UpstreamError as err:
        assert_no_secrets_in(err)
        return
    assert isinstance(identity, Identity)
    assert acceptable_id(identity.openid)
    assert identity.unionid is None or acceptable_id(identity.unionid)
    assert not want_unionid or identity.unionid is not None


@examples(300)
@given(data=st.data(), openid=identifiers, client_id=client_ids)
def test_me_yields_an_openid_only_of_the_allowed_shape(
    data: st.DataObject, openid: Any, client_id: Any
) -> None:
    body = wire(data.draw, {"client_id": client_id, "openid": openid})
    try:
        got, unionid = connector({"me": body}).check_token(ACCESS_TOKEN)
    except UpstreamError as err:
        assert_no_secrets_in(err)
        return
    assert unionid is None
    assert got == openid or got == openid.strip()  # form values are stripped (section 3.2)
    assert acceptable_id(got)
    assert str(client_id) == APP_ID


@examples(300)
@given(
    args=st.dictionaries(
        st.sampled_from(["code", "state", "usercancel", "msg"]) | st.text(max_size=5),
        st.text(max_size=140) | st.from_regex(r"[A-Za-z0-9]{1,140}", fullmatch=True),
    )
)
def test_callback_code_is_short_ascii_alphanumeric(args: dict[str, str]) -> None:
    try:
        code = connector({}).parse_callback(args)
    except UpstreamError:
        return
    assert re.fullmatch(r"[A-Za-z0-9]{1,128}", code)
    assert args.get("usercancel", "0").strip() in ("", "0")


# --------------------------------------------------------------------------- profile values (UP-16)


@examples(300)
@given(value=st.text() | json_values)
def test_nickname_is_clean_and_bounded(value: Any) -> None:
    nickname = clean_nickname(value)
    assert isinstance(nickname, str)
    assert len(nickname) <= MAX_NICKNAME_CHARS
    assert not any(unicodedata.category(ch) in ("Cc", "Cf") for ch in nickname)


urlish = st.builds(
    lambda scheme, sep, netloc, rest: scheme + sep + netloc + rest,
    st.sampled_from(["http", "https", "HTTP", "javascript", "data", "ftp", ""]),
    st.sampled_from(["://", ":", ":////", "//", ""]),
    st.text(alphabet=st.sampled_from(list("abc.qlogo[]:@1%\uff03")) | st.characters(), max_size=15),
    st.text(max_size=15),
)


@examples(400)
@given(
    url=urlish | st.text() | json_values, policy=st.sampled_from(["https", "proxy", "passthrough"])
)
@example(url="http://thirdqq.qlogo.cn/g?b=oidb&k=x&s=100", policy="https")
@example(url="http://[", policy="passthrough")
def test_picture_is_an_http_url_or_nothing(url: Any, policy: str) -> None:
    picture = picture_claim(url, policy)
    if picture is None:
        return
    parts = urlsplit(picture)
    assert parts.scheme in (("http", "https") if policy == "passthrough" else ("https",))
    assert parts.hostname
    assert len(picture) <= 1024


# --------------------------------------------------------------------------- authorization request

claims_shaped = st.dictionaries(
    st.sampled_from(["userinfo", "id_token", "access_token"]) | st.text(max_size=5),
    st.none()
    | json_values
    | st.dictionaries(st.text(max_size=8), st.none() | json_values | st.just({"essential": True})),
    max_size=3,
)


def claims_oracle(value: Any) -> bool:
    """OIDC Core §5.5: an object of userinfo/id_token, each null or {name: null | object}."""
    if not isinstance(value, dict) or not set(value) <= {"userinfo", "id_token"}:
        return False
    return all(
        members is None
        or (
            isinstance(members, dict)
            and all(v is None or isinstance(v, dict) for v in members.values())
        )
        for members in value.values()
    )


@examples(300)
@given(value=claims_shaped | json_values)
def test_claims_request_validation_matches_oidc_core(value: Any) -> None:
    assert _valid_claims_request(json.dumps(value)) is claims_oracle(value)


@examples(300)
@given(text=st.text() | qq_text)
def test_claims_request_validation_returns_a_bool_for_any_text(text: str) -> None:
    assert isinstance(_valid_claims_request(text), bool)


DESCRIPTIONS = re.compile(
    r"Too many parameters\.|Multiple '(?P<multi>\w+)' in request\.|'(?P<long>\w+)' is too long\."
    r"|Missing 'response_type'\.|Request objects are not supported\."
    r"|Only response_mode=query or form_post is supported\.|Invalid 'max_age'\."
    r"|Invalid 'claims' parameter\."
)
parameter_values = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        [
            "code",
            "query",
            "form_post",
            "fragment",
            "10",
            "-1",
            "",
            "openid",
            "²",
            "١٢",
            "1.5",
            " 1",
            "9" * 20,
        ]
    ),
    claims_shaped.map(json.dumps),
    st.integers(500, 5000).map(lambda n: "x" * n),
)
any_datalists = st.dictionaries(
    st.sampled_from(KNOWN) | st.text(max_size=6),
    st.lists(parameter_values, min_size=1, max_size=3),  # a sent name has a value
    max_size=70,
)
GOOD_REQUEST = {"response_type": ["code"], "client_id": ["rp"], "scope": ["openid"],
                "redirect_uri": ["https://rp.example/cb"], "state": ["s"]}  # fmt: skip


@st.composite
def spoiled_requests(draw: st.DrawFn) -> dict[str, list[str]]:
    """A good request with up to two parameters added, replaced or dropped."""
    datalist = dict(GOOD_REQUEST)
    other = draw(any_datalists)
    for name in draw(st.lists(st.sampled_from(sorted(other)), max_size=2)) if other else []:
        datalist[name] = other[name]
    for name in draw(st.lists(st.sampled_from(sorted(GOOD_REQUEST)), max_size=1)):
        datalist.pop(name, None)
    return datalist


datalists = spoiled_requests() | any_datalists


@examples(400)
@given(datalist=datalists)
def test_authorization_parameters_fail_only_with_constant_oauth_errors(
    datalist: dict[str, list[str]],
) -> None:
    """DO-02: a request is accepted only bounded, single-valued and well-formed; refusals
    are OAuth errors whose description quotes no request value, only our own names."""
    try:
        check_authorization_parameters(datalist)
    except OAuth2Error as err:
        match = DESCRIPTIONS.fullmatch(err.description or "")
        assert match, err.description
        named = match.group("multi") or match.group("long")
        assert named is None or named in KNOWN
        return
    assert len(datalist) <= 64
    for name in KNOWN:
        values = datalist.get(name, [])
        assert len(values) <= 1
        assert not values or len(values[0]) <= 4096
    assert datalist.get("response_type")
    assert "request" not in datalist and "request_uri" not in datalist
    assert datalist.get("response_mode", ["query"])[0] in ("query", "form_post")
    if datalist.get("max_age"):
        assert re.fullmatch(r"[0-9]+", datalist["max_age"][0])  # int() must not fail later
    if datalist.get("claims"):
        assert claims_oracle(json.loads(datalist["claims"][0]))


# --------------------------------------------------------------------------- id_token_hint (IT-05)


@pytest.fixture(scope="module")
def end_session(tmp_path_factory: pytest.TempPathFactory) -> BrokerEndSessionEndpoint:
    keyring = KeyRing.load_or_create(tmp_path_factory.mktemp("keys"), ["RS256", "ES256"])
    config = SimpleNamespace(
        keys=SimpleNamespace(algorithms=("RS256", "ES256")), issuer="https://id.example"
    )
    ctx: Any = SimpleNamespace(keyring=keyring, config=config)
    return BrokerEndSessionEndpoint(ctx)


def b64(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


odd_values: st.SearchStrategy[Any] = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.text(max_size=8)
    | st.lists(st.integers(), max_size=2)
    | st.just({})
)
jose_headers = st.dictionaries(
    st.sampled_from(
        ["alg", "kid", "typ", "cty", "jku", "jwk", "x5u", "x5c", "x5t", "b64", "zip", "enc", "crit"]
    )
    | st.text(max_size=4),
    st.sampled_from(["RS256", "ES256", "none", "HS256", "EdDSA", "RSA-OAEP", "DEF"])
    | st.lists(st.sampled_from(["alg", "exp", "b64", "x"]), max_size=2)
    | odd_values,
    max_size=5,
)


@st.composite
def hints(draw: st.DrawFn) -> str:
    shape = draw(st.sampled_from(["jws", "segments", "dots"]))
    if shape == "dots":
        return "." * draw(st.integers(0, 20_000))
    if shape == "segments":
        parts = draw(st.lists(st.text(max_size=12) | st.binary(max_size=40).map(b64), max_size=6))
        return ".".join(parts)
    header = json.dumps(draw(jose_headers | json_values)).encode()
    payload = json.dumps(draw(json_values)).encode()
    return ".".join((b64(header), b64(payload), b64(draw(st.binary(max_size=300)))))


@examples(300)
@given(hint=hints())
def test_forged_hints_are_invalid_requests(
    end_session: BrokerEndSessionEndpoint, hint: str
) -> None:
    """Nothing unsigned by our keys validates, and a refusal is an OAuth error (or the
    ValueError the provider turns into one), never another exception."""
    with pytest.raises((OAuth2Error, ValueError)):
        end_session._validate_id_token_hint(hint)


# --------------------------------------------------------------------------- config values

SECRET_MARK = "sekrit"
ENVIRON = {
    "SET": "value",
    "EMPTY": "",
    "PORT": "8080",
    "SECRET_ENV": f"{SECRET_MARK}-env-" + "q" * 30,
}
secrets_ = st.one_of(
    st.text(alphabet="0123456789abcdef", min_size=6, max_size=6).map(
        lambda h: f"{SECRET_MARK}-{h}-" + "z" * 30
    ),
    st.just("${SECRET_ENV}"),
    st.just(f"{SECRET_MARK}-short"),
)
interesting = st.sampled_from([
    "${SET}", "${UNSET}", "${UNSET:-}", "${UNSET:-8080}", "${EMPTY}", "${", "${1BAD}", "${PORT}",
    "http://127.0.0.1:8000", "https://id.example.com", "https://id.example.com/", "http://[",
    "http://a@b/", "https://x.example/cb#f", "https://x.example/*", "javascript:alert(1)",
    "http://evil.example/cb", "https://x.example/cb?code=1", "sqlite:///x.db",
    "sqlite:///:memory:", "redis://127.0.0.1/0", "memory", "RS256", "ES256", "EdDSA", "none",
    "openid", "unionid", "pairwise", "client_secret_basic", "private_key_jwt",
    "https://graph.qq.com", "get_user_info", "0", "-1", "65536", "true", "false", "on", "", " ",
    "a\nb", "\x00", "qq-user.invalid",
])  # fmt: skip
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-5, 10**6)
    | st.floats()
    | st.text(max_size=12)
    | interesting
)
CONFIG_KEYS = [
    "issuer", "server", "secret_key", "storage", "keys", "upstream", "qq", "clients", "client_id",
    "redirect_uris", "app_id", "app_key", "url", "dir", "algorithms",
]  # fmt: skip


def config_containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    keys = st.sampled_from(CONFIG_KEYS) | st.text(max_size=6) | st.integers()
    return st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=4)


garbage = st.recursive(scalars, config_containers, max_leaves=8)


def maybe(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a plausible value, sometimes anything at all."""
    return st.one_of(valid, valid, valid, garbage)


uris = (
    st.sampled_from(
        [
            "http://127.0.0.1:9/cb",
            "https://rp.example/cb",
            "https://rp.example/cb?t=1",
            "http://rp.example/cb",
            "https://other.example/cb",
        ]
    )
    | interesting
)
public_jwk = {"kty": "RSA", "n": "AQAB", "e": "AQAB"}
clients = st.fixed_dictionaries(
    {},
    optional={
        "client_id": maybe(st.sampled_from(["rp", "rp-2", "a b", "x" * 256])),
        "client_secret": maybe(secrets_),
        "redirect_uris": maybe(st.lists(uris, min_size=1, max_size=3)),
        "token_endpoint_auth_method": maybe(
            st.sampled_from(
                ["client_secret_basic", "client_secret_post", "none", "private_key_jwt", "tls"]
            )
        ),
        "grant_types": maybe(
            st.lists(
                st.sampled_from(["authorization_code", "refresh_token", "password"]), max_size=3
            )
        ),
        "post_logout_redirect_uris": maybe(st.lists(uris, max_size=2)),
        "backchannel_logout_uri": maybe(uris),
        "subject": maybe(st.sampled_from(["openid", "unionid", "pairwise", "email"])),
        "sector_identifier_uri": maybe(uris),
        "email": maybe(st.sampled_from(["omit", "synthetic"])),
        "upstream_check": maybe(st.sampled_from(["strict", "cached", "off"])),
        "access_token_format": maybe(st.sampled_from(["opaque", "jwt"])),
        "id_token_signed_response_alg": maybe(st.sampled_from(["RS256", "ES256", "EdDSA", "none"])),
        "expose_qq_ids": maybe(st.booleans()),
        "jwks": maybe(
            st.sampled_from(
                [
                    {"keys": [public_jwk]},
                    {"keys": [{**public_jwk, "d": "x"}]},
                    {"keys": []},
                    {"keys": [{"kty": 1}]},
                    {"keys": [{"kty": "RSA", "n": "${SET}"}]},
                ]
            )
        ),
        "jwks_uri": maybe(uris),
    },
)
configs = st.fixed_dictionaries(
    {},
    optional={
        "issuer": maybe(
            st.sampled_from(
                [
                    "http://127.0.0.1:8000",
                    "https://id.example.com",
                    "https://id.example.com/oidc",
                    "http://localhost:1",
                    "http://[::1]:80",
                ]
            )
        ),
        "server": maybe(
            st.fixed_dictionaries(
                {},
                optional={
                    "host": scalars,
                    "port": maybe(st.integers(0, 70000)),
                    "threads": maybe(st.integers(0, 2000)),
                },
            )
        ),
        "secret_key": maybe(secrets_),
        "pairwise_salt": maybe(secrets_),
        "storage": maybe(st.fixed_dictionaries({}, optional={"url": scalars})),
        "keys": maybe(
            st.fixed_dictionaries(
                {},
                optional={
                    "dir": scalars,
                    "algorithm": maybe(st.sampled_from(["RS256", "ES256", "EdDSA", "HS256"])),
                    "algorithms": maybe(
                        st.lists(st.sampled_from(["RS256", "ES256", "EdDSA", "HS256"]), max_size=4)
                    ),
                },
            )
        ),
        "upstream": maybe(
            st.fixed_dictionaries(
                {},
                optional={
                    "qq": maybe(
                        st.fixed_dictionaries(
                            {},
                            optional={
                                "app_id": maybe(
                                    st.sampled_from(["101000001", 101000001, "10a", ""])
                                ),
                                "app_key": maybe(secrets_),
                                "base_url": maybe(
                                    st.sampled_from(
                                        [
                                            "https://graph.qq.com",
                                            "http://127.0.0.1:1",
                                            "https://qq.example",
                                        ]
                                    )
                                    | interesting
                                ),
                                "scope": scalars,
                                "subject": scalars,
                                "allow_staging_base_url": maybe(st.booleans()),
                            },
                        )
                    )
                },
            )
        ),
        "rate_limits": maybe(
            st.fixed_dictionaries({}, optional={"enabled": scalars, "storage": scalars})
        ),
        "lifetimes": maybe(
            st.dictionaries(
                st.sampled_from(
                    [
                        "code",
                        "login",
                        "access_token",
                        "id_token",
                        "refresh_idle",
                        "refresh_absolute",
                        "session",
                    ]
                ),
                scalars,
            )
        ),
        "claims": maybe(
            st.fixed_dictionaries(
                {}, optional={"picture": scalars, "gender": scalars, "email_domain": scalars}
            )
        ),
        "clients": maybe(st.lists(maybe(clients), max_size=3)),
    },
)
BASE_CONFIGS: tuple[dict[str, Any], ...] = (
    {  # development: loopback issuer, emulator upstream
        "issuer": "http://127.0.0.1:8000",
        "upstream": {"qq": {"app_id": "101000001", "app_key": f"{SECRET_MARK}-base-" + "z" * 30,
                            "base_url": "http://127.0.0.1:9"}},
        "clients": [{"client_id": "rp", "client_secret": f"{SECRET_MARK}-rp-" + "z" * 30,
                     "redirect_uris": ["http://127.0.0.1:9/cb"]}],
    },
    {  # production: https everywhere, real QQ
        "issuer": "https://id.example.com",
        "secret_key": f"{SECRET_MARK}-key-" + "Zq7" * 20,
        "upstream": {"qq": {"app_id": 101000001, "app_key": f"{SECRET_MARK}-base-" + "z" * 30}},
        "clients": [{"client_id": "rp", "client_secret": f"{SECRET_MARK}-rp-" + "z" * 30,
                     "redirect_uris": ["https://rp.example/cb"]}],
    },
)  # fmt: skip


@st.composite
def spoiled_configs(draw: st.DrawFn) -> dict[str, Any]:
    """A good config with up to two sections, and up to two keys of its client, replaced
    (or an unknown key added)."""
    config: dict[str, Any] = copy.deepcopy(draw(st.sampled_from(BASE_CONFIGS)))
    other = draw(configs)
    for key in draw(st.lists(st.sampled_from(sorted(other)), max_size=2)) if other else []:
        config[key] = other[key]
    client = draw(clients)
    if client and isinstance(config.get("clients"), list) and config["clients"]:
        target = config["clients"][0]
        if isinstance(target, dict):
            for key in draw(st.lists(st.sampled_from(sorted(client)), max_size=2)):
                target[key] = client[key]
    config.update(draw(st.dictionaries(st.text(max_size=8), garbage, max_size=1)))
    return config


config_data = st.one_of(spoiled_configs(), spoiled_configs(), configs, garbage)


@examples(500)
@given(data=config_data)
def test_parse_config_raises_only_config_errors_and_never_shows_a_secret(data: Any) -> None:
    try:
        config = parse_config(
            data, source="<fuzz>", base_dir=Path("/nonexistent/fuzz"), environ=ENVIRON
        )
    except ConfigError as err:
        assert str(err).startswith("<fuzz>")
        assert SECRET_MARK not in str(err)
        return
    assert isinstance(config, Config)
    assert SECRET_MARK not in repr(config)


# --------------------------------------------------------------------------- descriptions, locales

SAFE_DESCRIPTION = frozenset(string.ascii_letters + string.digits + " .,:;()'_/=+-")
#: What the output may hold: the safe characters and the "?" that replaces the rest. No
#: quote, backslash or markup (RFC 6749 §4.1.2.1 plus no HTML).
DESCRIPTION_ALPHABET = SAFE_DESCRIPTION | {"?"}


@examples(300)
@given(text=st.text() | qq_text, limit=st.integers(0, 300))
def test_safe_description_stays_in_its_alphabet(text: str, limit: int) -> None:
    description = safe_description(text, limit)
    assert set(description) <= DESCRIPTION_ALPHABET
    assert len(description) <= limit


@examples(100)
@given(text=st.text(alphabet=sorted(SAFE_DESCRIPTION)))
def test_safe_description_keeps_safe_text(text: str) -> None:
    assert safe_description(text) == text[:200]


@examples(300)
@given(
    ui_locales=st.none() | st.text() | st.sampled_from(["en", "zh-CN", "EN-us zh", "fr", " "]),
    accepted=st.lists(st.text(max_size=10) | st.sampled_from(["en-US", "zh", "*", ""]), max_size=4),
)
def test_pick_locale_is_always_a_supported_locale(
    ui_locales: str | None, accepted: list[str]
) -> None:
    locale = pick_locale(ui_locales, accepted)
    assert locale in ("zh-CN", "en")
    first = (ui_locales or "").split()[:1]
    if first and first[0].lower().startswith("en"):
        assert locale == "en"


# --------------------------------------------------------------------------- found by fuzzing
# Each of these was a crash the properties or the HTTP fuzz found (then fixed in the product).


@pytest.mark.parametrize("text", ["[" * 1000, '{"userinfo":' * 1000, '{"id_token":{"a":' * 600])
def test_deeply_nested_claims_request_is_invalid(text: str) -> None:
    """Was: json.loads' RecursionError escaped (1004 characters pass the 2048 cap)."""
    assert _valid_claims_request(text) is False


@pytest.mark.parametrize("url", ["http://[", "http://[::1", "https://x\uff03@y/"])
@pytest.mark.parametrize("policy", ["https", "passthrough"])
def test_picture_claim_survives_an_unparseable_url(url: str, policy: str) -> None:
    """Was: urlsplit's ValueError escaped, so /token and /userinfo failed for the user."""
    assert picture_claim(url, policy) is None


@pytest.mark.parametrize("crit", [5, None, [1], [[]], [{}], {}, True, "x", ["x", 2]])
def test_hint_with_a_non_list_crit_is_an_invalid_request(
    end_session: BrokerEndSessionEndpoint, crit: Any
) -> None:
    """Was: joserfc's TypeError escaped Authlib (which catches JoseError only): a 500."""
    header = json.dumps({"alg": "RS256", "crit": crit}).encode()
    hint = ".".join((b64(header), b64(b"{}"), b64(b"x")))
    with pytest.raises(OAuth2Error):
        end_session._validate_id_token_hint(hint)
