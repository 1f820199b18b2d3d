"""The dev-mode flow in a real browser, as a person goes through it, in zh-CN and en.

Demo relying party → broker → the emulator's QQ login page (an account picked with the
keyboard) → back on the demo page with the verified ID token → logout through the
broker → the next login asks QQ again (the broker session really ended). Then the
paths a person meets less often: cancelling at QQ, the broker's logout confirmation
page (a logout without an ID token hint) and its error page.

Every page gets the checks of tests/browser/pagecheck.py (CSP, no inline script or
style, lang, viewport, labelled controls, contrast in light and dark mode, no
horizontal scrolling) and a screenshot in ``$ARTIFACTS_DIR/screenshots``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import pytest
import requests

from tests.browser.conftest import DevStack, screenshot_dir
from tests.browser.pagecheck import PageWatch, check_page, shoot

#: What a person reads on each page, per locale (the assertions look for these words).
WORDS = {
    "zh-CN": {
        "demo_heading": "演示应用",
        "login": "使用 QQ 登录",
        "qq_heading": "QQ帐号登录",
        "verified": "ID 令牌签名已用发布的 JWKS 验证通过",
        "logout": "退出登录",
        "confirm_heading": "退出登录？",
        "signed_out": ("已退出登录", "您已退出登录。"),
        "cancel": "取消",
        "cancelled": "登录窗口已关闭",
        "error_heading": "登录出现问题",
        "qq_failed": "登录服务出错，未能完成登录",
    },
    "en": {
        "demo_heading": "Demo relying party",
        "login": "Login with QQ",
        "qq_heading": "Log in with QQ",
        "verified": "ID token signature verified against the published JWKS",
        "logout": "Log out",
        "confirm_heading": "Sign out?",
        "signed_out": ("Signed out", "You are signed out."),
        "cancel": "Cancel",
        "cancelled": "The login window was closed",
        "error_heading": "Sign-in problem",
        "qq_failed": "The login service ran into a problem and could not sign you in",
    },
}
#: The account each locale logs in as: a plain CJK nickname, and one with emoji.
ACCOUNT = {"zh-CN": "zhangsan", "en": "xiaoming"}
VIEWPORTS = {
    "desktop": {"viewport": {"width": 1280, "height": 800}},
    "mobile": {"viewport": {"width": 375, "height": 740}, "is_mobile": True, "has_touch": True},
}


@dataclass
class Walk:
    """One person's tab: the page, what the browser reported, where screenshots go."""

    page: Any
    watch: PageWatch
    locale: str
    prefix: str

    def seen(self, step: str, *, dark_mode: bool = True, http_error: bool = False) -> None:
        """Check the page now shown, then screenshot it as ``<prefix>-<step>.png``."""
        if http_error:
            # Chromium reports a 4xx document as a failed load; that is the page's point.
            self.watch.console_errors[:] = [
                e for e in self.watch.console_errors if "Failed to load resource" not in e
            ]
        check_page(self.page, self.watch, self.locale, dark_mode=dark_mode)
        shoot(self.page, screenshot_dir(), f"{self.prefix}-{step}")

    def press(self, role: str, name: str | re.Pattern[str]) -> None:
        """Reach a control with the keyboard (focus) and activate it with Enter."""
        control = self.page.get_by_role(role, name=name)
        control.focus()
        assert self.page.evaluate("document.activeElement.textContent").strip()
        self.page.keyboard.press("Enter")


@pytest.fixture(params=[(locale, view) for view in VIEWPORTS for locale in WORDS], ids=str)
def walk(request: pytest.FixtureRequest, browser: Any) -> Iterator[Walk]:
    locale, view = request.param
    context = browser.new_context(locale=locale, **VIEWPORTS[view])
    context.set_default_timeout(30_000)
    page = context.new_page()
    watch = PageWatch()
    watch.attach(page)
    prefix = locale if view == "desktop" else f"{locale}-mobile"
    try:
        yield Walk(page, watch, locale, prefix)
    finally:
        context.close()


def test_login_and_logout_through_the_demo(walk: Walk, dev_stack: DevStack) -> None:
    page, words = walk.page, WORDS[walk.locale]
    account = dev_stack.users()[ACCOUNT[walk.locale]]

    # 1. The demo relying party, in the browser's language (Accept-Language).
    page.goto(f"{dev_stack.demo}/")
    assert page.get_by_role("heading", level=1).inner_text() == words["demo_heading"]
    walk.seen("01-demo-home")

    # 2. Login: demo → broker /authorize → emulator → its login page.
    walk.press("link", words["login"])
    page.wait_for_url(f"{dev_stack.emulator}/oauth2.0/show?**")
    assert words["qq_heading"] in page.get_by_role("heading", level=1).inner_text()
    walk.seen("02-qq-login", dark_mode=False)

    # 3. Pick the account with the keyboard → broker callback → demo, signed in.
    walk.press("button", re.compile(re.escape(account["nickname"])))
    page.wait_for_url(f"{dev_stack.demo}/")
    assert words["verified"] in page.locator("#verified").inner_text()
    assert page.locator("#claim-sub").inner_text().strip() == account["openid"]
    assert page.locator("#claim-nickname").inner_text().strip() == account["nickname"]
    assert dev_stack.issuer in page.content()  # iss of the verified ID token
    walk.seen("03-demo-signed-in")

    # 4. Logout: demo → broker /logout with the ID token hint (no question: the hint names
    # this browser's session) → back to the demo's registered post-logout page.
    walk.press("button", words["logout"])
    page.wait_for_url(lambda url: url.startswith(f"{dev_stack.demo}/logged-out"))
    assert_signed_out(page, words)
    walk.seen("05-signed-out")

    # 5. The broker session is gone: logging in again goes to QQ. Cancel there.
    page.goto(f"{dev_stack.demo}/login")
    page.wait_for_url(f"{dev_stack.emulator}/oauth2.0/show?**")
    walk.press("button", words["cancel"])
    page.wait_for_url(f"{dev_stack.emulator}/oauth2.0/authorize")
    assert words["cancelled"] in page.get_by_role("heading", level=1).inner_text()
    walk.seen("06-qq-cancelled", dark_mode=False)


def test_logout_without_a_hint_asks_first(walk: Walk, dev_stack: DevStack) -> None:
    """An RP that lost its ID token: the broker confirms (Logout §6) before ending anything."""
    page, words = walk.page, WORDS[walk.locale]
    page.goto(f"{dev_stack.demo}/login")
    page.wait_for_url(f"{dev_stack.emulator}/oauth2.0/show?**")
    walk.press("button", re.compile(re.escape(dev_stack.users()["lisi"]["nickname"])))
    page.wait_for_url(f"{dev_stack.demo}/")

    query = urlencode({"client_id": "demo", "ui_locales": walk.locale})
    page.goto(f"{dev_stack.issuer}/logout?{query}")
    assert page.get_by_role("heading", level=1).inner_text() == words["confirm_heading"]
    walk.seen("07-broker-logout-confirm")
    walk.press("button", words["logout"] if walk.locale == "zh-CN" else "Sign out")
    page.wait_for_url(f"{dev_stack.issuer}/logout?ui_locales={walk.locale}")
    assert_signed_out(page, words)
    walk.seen("08-broker-signed-out")

    # A sign-in request the broker cannot send back anywhere: its error page.
    query = urlencode({"client_id": "no-such-app", "response_type": "code"})
    page.goto(f"{dev_stack.issuer}/authorize?{query}")
    assert page.get_by_role("heading", level=1).inner_text() == words["error_heading"]
    walk.seen("09-broker-error", http_error=True)


def test_ui_locales_wins_over_the_browser_language(walk: Walk, dev_stack: DevStack) -> None:
    """OIDC ``ui_locales`` first, Accept-Language second: on the demo, broker and emulator."""
    page = walk.page
    other = "en" if walk.locale == "zh-CN" else "zh-CN"
    words = WORDS[other]
    walk.locale = other  # the pages must now say lang=<other>
    page.goto(f"{dev_stack.demo}/?ui_locales={other}")
    assert page.get_by_role("heading", level=1).inner_text() == words["demo_heading"]
    walk.press("link", words["login"])  # the demo passes ui_locales on to the broker
    page.wait_for_url(f"{dev_stack.emulator}/oauth2.0/show?**")
    page.goto(page.url + "&" + urlencode({"ui_locales": other}))
    assert words["qq_heading"] in page.get_by_role("heading", level=1).inner_text()
    page.goto(f"{dev_stack.issuer}/authorize?" + urlencode({"ui_locales": other}))
    assert page.get_by_role("heading", level=1).inner_text() == words["error_heading"]


def assert_signed_out(page: Any, words: dict[str, Any]) -> None:
    """The broker's "signed out" page, or the demo's when it is the post-logout target."""
    shown = page.get_by_role("main").inner_text()
    assert any(text in shown for text in words["signed_out"]), shown


def test_a_qq_error_reads_as_plain_language(walk: Walk, dev_stack: DevStack) -> None:
    """QQ refuses the code (100020): the demo gets server_error and says so in words."""
    page, words = walk.page, WORDS[walk.locale]
    control = f"{dev_stack.emulator}/_emulator/control"
    refuse_code = {"faults": {"token": "error:100020"}}
    requests.post(control, json=refuse_code, timeout=10).raise_for_status()
    try:
        page.goto(f"{dev_stack.demo}/login")
        page.wait_for_url(f"{dev_stack.emulator}/oauth2.0/show?**")
        walk.press("button", re.compile(re.escape(dev_stack.users()["zhaoliu"]["nickname"])))
        page.wait_for_url(f"{dev_stack.demo}/callback?**")
    finally:
        requests.post(control, json={"faults": {}}, timeout=10).raise_for_status()
    alert = page.get_by_role("alert").inner_text()
    assert words["qq_failed"] in alert
    assert "server_error" in alert  # the technical detail, beneath the sentence
    walk.seen("10-demo-login-failed", http_error=True)
