"""Every page a person can see, fetched over HTTP from the dev stack: markup and headers.

These run without a browser (so a machine without chromium still checks them): each
page carries a Content-Security-Policy without 'unsafe-inline', no inline script or
style, a ``lang`` that follows ``ui_locales`` then Accept-Language, a mobile viewport,
and a name for every control. tests/browser/test_dev_flow.py checks the rendered
result (contrast, keyboard, layout) in chromium.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import urlencode, urljoin

import pytest
import requests

from tests.browser.conftest import DevStack

APP_ID = "101000001"  # the dev app id (broker/cli.py dev_config)


@dataclass
class Markup:
    """What the checks need from one HTML page."""

    lang: str | None = None
    viewport: str = ""
    inline_scripts: int = 0
    style_elements: int = 0
    problems: list[str] = field(default_factory=list)
    labels_for: set[str] = field(default_factory=set)
    inputs: list[dict[str, str]] = field(default_factory=list)
    buttons: list[str] = field(default_factory=list)
    forms: list[dict[str, object]] = field(default_factory=list)


class PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found = Markup()
        self._button: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        found = self.found
        for name in attributes:
            if name.startswith("on"):
                found.problems.append(f"<{tag} {name}=...> event handler")
            if name == "style":
                found.problems.append(f"<{tag} style=...> inline style")
        if attributes.get("href", "").strip().lower().startswith("javascript:"):
            found.problems.append("javascript: link")
        if tag == "html":
            found.lang = attributes.get("lang")
        elif tag == "meta" and attributes.get("name") == "viewport":
            found.viewport = attributes.get("content", "")
        elif tag == "script" and "src" not in attributes:
            found.inline_scripts += 1
        elif tag == "style":
            found.style_elements += 1
        elif tag == "label" and "for" in attributes:
            found.labels_for.add(attributes["for"])
        elif tag in ("input", "select", "textarea"):
            found.inputs.append(attributes)
            if tag == "input" and found.forms:
                fields = found.forms[-1]["fields"]
                assert isinstance(fields, dict)
                if attributes.get("type") == "hidden":
                    fields[attributes.get("name", "")] = attributes.get("value", "")
        elif tag == "form":
            found.forms.append({"action": attributes.get("action", ""), "fields": {}})
        elif tag == "button":
            self._button = [attributes.get("aria-label", "")]

    def handle_data(self, data: str) -> None:
        if self._button is not None:
            self._button.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "button" and self._button is not None:
            self.found.buttons.append("".join(self._button).strip())
            self._button = None


def parse(html: str) -> Markup:
    parser = PageParser()
    parser.feed(html)
    return parser.found


def assert_page(response: requests.Response, lang: str, *, scripts_allowed: bool = False) -> Markup:
    """The rules every human-facing page follows; returns the parsed markup."""
    assert response.headers["Content-Type"].startswith("text/html"), response.url
    csp = response.headers.get("Content-Security-Policy", "")
    assert "default-src 'none'" in csp, (response.url, csp)
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, csp
    assert "frame-ancestors 'none'" in csp, csp
    if not scripts_allowed:
        assert "script-src" not in csp, csp  # default-src 'none': no script runs at all
    markup = parse(response.text)
    assert markup.problems == [], (response.url, markup.problems)
    assert markup.inline_scripts == 0 and markup.style_elements == 0, response.url
    assert markup.lang == lang, (response.url, markup.lang)
    assert "width=device-width" in markup.viewport, response.url
    for control in markup.inputs:
        if control.get("type") in ("hidden", "submit"):
            continue
        named = control.get("id") in markup.labels_for or control.get("aria-label")
        assert named, f"{response.url}: unlabelled control {control}"
    assert all(markup.buttons), f"{response.url}: a button without a name {markup.buttons}"
    return markup


def get(url: str, language: str | None = None, **kwargs: object) -> requests.Response:
    headers = {"Accept-Language": language} if language else {}
    return requests.get(url, headers=headers, timeout=10, **kwargs)  # type: ignore[arg-type]


LANGUAGE_CASES = [
    # (ui_locales, Accept-Language, expected): ui_locales first, then the header.
    (None, "zh-CN,zh;q=0.9,en;q=0.8", "zh-CN"),
    (None, "en-US,en;q=0.9", "en"),
    (None, "fr-FR, en;q=0.5", "en"),
    ("en", "zh-CN", "en"),
    ("zh-CN", "en-GB", "zh-CN"),
    ("de zh-TW", "en", "zh-CN"),
]


@pytest.mark.parametrize(("ui_locales", "accept", "expected"), LANGUAGE_CASES)
def test_demo_page_language(
    dev_stack: DevStack, ui_locales: str | None, accept: str, expected: str
) -> None:
    query = f"?{urlencode({'ui_locales': ui_locales})}" if ui_locales else ""
    markup = assert_page(get(f"{dev_stack.demo}/{query}", accept), expected)
    assert markup.buttons == []  # signed out: one link, no form


def test_demo_without_any_language_hint_is_english(dev_stack: DevStack) -> None:
    """The demo is read by the developer trying the broker; broker pages default to zh-CN."""
    assert_page(get(f"{dev_stack.demo}/"), "en")
    assert_page(get(f"{dev_stack.issuer}/nope"), "zh-CN")


def test_demo_remembers_a_picked_language(dev_stack: DevStack) -> None:
    browser = requests.Session()
    browser.headers["Accept-Language"] = "en"
    assert_page(browser.get(f"{dev_stack.demo}/?ui_locales=zh-CN", timeout=10), "zh-CN")
    assert_page(browser.get(f"{dev_stack.demo}/", timeout=10), "zh-CN")
    assert_page(browser.get(f"{dev_stack.demo}/logged-out", timeout=10), "zh-CN")


def test_demo_passes_its_language_to_the_broker(dev_stack: DevStack) -> None:
    login = get(f"{dev_stack.demo}/login?ui_locales=zh-CN", "en", allow_redirects=False)
    assert login.status_code == 302
    assert login.headers["Location"].startswith(f"{dev_stack.issuer}/authorize?")
    assert "ui_locales=zh-CN" in login.headers["Location"]


@pytest.mark.parametrize(("ui_locales", "accept", "expected"), LANGUAGE_CASES)
def test_broker_pages_language(
    dev_stack: DevStack, ui_locales: str | None, accept: str, expected: str
) -> None:
    extra = {"ui_locales": ui_locales} if ui_locales else {}
    error = get(f"{dev_stack.issuer}/authorize?{urlencode({'client_id': 'nope', **extra})}", accept)
    assert error.status_code == 400
    assert_page(error, expected)
    assert_page(get(f"{dev_stack.issuer}/no-such-page?{urlencode(extra)}", accept), expected)
    confirm = get(f"{dev_stack.issuer}/logout?{urlencode({'client_id': 'demo', **extra})}", accept)
    assert confirm.status_code == 200
    form = assert_page(confirm, expected).forms[0]
    signed_out = requests.post(
        urljoin(confirm.url, str(form["action"])),
        data=form["fields"],  # type: ignore[arg-type]
        headers={"Accept-Language": accept},
        timeout=10,
    )
    assert signed_out.status_code == 200
    assert_page(signed_out, expected)  # the confirmation form keeps the RP's ui_locales


def emulator_show_params(stack: DevStack, **extra: str) -> dict[str, str]:
    return {
        "which": "Login",
        "display": "pc",
        "client_id": APP_ID,
        "redirect_uri": f"{stack.issuer}/qq/callback",
        "response_type": "code",
        "state": "s",
        **extra,
    }


@pytest.mark.parametrize(("ui_locales", "accept", "expected"), LANGUAGE_CASES)
def test_emulator_pages_language(
    dev_stack: DevStack, ui_locales: str | None, accept: str, expected: str
) -> None:
    extra = {"ui_locales": ui_locales} if ui_locales else {}
    params = emulator_show_params(dev_stack, **extra)
    login = get(f"{dev_stack.emulator}/oauth2.0/show?{urlencode(params)}", accept)
    markup = assert_page(login, expected)
    assert len(markup.buttons) >= 2  # one per account, plus cancel
    bad = {**params, "response_type": "token"}
    error = get(f"{dev_stack.emulator}/oauth2.0/authorize?{urlencode(bad)}", accept)
    assert "(100000)" in error.text
    assert_page(error, expected)
    form_fields = {k: v for k, v in params.items() if k != "which"}
    cancelled = requests.post(
        f"{dev_stack.emulator}/oauth2.0/authorize",
        data={**form_fields, "action": "cancel"},
        headers={"Accept-Language": accept},
        timeout=10,
    )
    assert_page(cancelled, expected)


def test_emulator_pages_keep_qq_headers(dev_stack: DevStack) -> None:
    """The CSP is added; QQ's own headers (qq-connect.md §3.3) stay as they were."""
    params = emulator_show_params(dev_stack)
    login = get(f"{dev_stack.emulator}/oauth2.0/show?{urlencode(params)}")
    assert login.headers["Server"] == "tws"
    assert login.headers["Content-Type"] == "text/html"
    stylesheet = get(f"{dev_stack.emulator}/static/emulator.css")
    assert stylesheet.status_code == 200 and "text/css" in stylesheet.headers["Content-Type"]
