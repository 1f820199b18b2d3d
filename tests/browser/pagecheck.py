"""What every page a person sees must satisfy, checked in the real browser.

The checks read what chromium actually rendered (computed colours, the DOM after
parsing, the headers of the document response), so a stylesheet that does not load or
an inline style the CSP blocks shows up here, where a look at the template would not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: WCAG 2.x contrast of text against the background it is drawn on (1.4.3, level AA);
#: large text (>= 24px, or >= 18.66px bold) needs 3:1. Walks every visible element that
#: has text of its own and composes semi-transparent backgrounds up the tree.
CONTRAST_JS = """
() => {
  const parse = (value) => {
    const m = value.match(/rgba?\\(([^)]+)\\)/);
    if (!m) return null;
    const p = m[1].split(/[\\s,\\/]+/).filter(Boolean).map(Number);
    return {r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1};
  };
  const over = (top, bottom) => ({
    r: top.r * top.a + bottom.r * (1 - top.a),
    g: top.g * top.a + bottom.g * (1 - top.a),
    b: top.b * top.a + bottom.b * (1 - top.a),
    a: 1,
  });
  const lum = (c) => {
    const f = (v) => {
      v /= 255;
      return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4);
    };
    return 0.2126 * f(c.r) + 0.7152 * f(c.g) + 0.0722 * f(c.b);
  };
  const ratio = (a, b) => {
    const [hi, lo] = [lum(a), lum(b)].sort((x, y) => y - x);
    return (hi + 0.05) / (lo + 0.05);
  };
  const backgroundOf = (element) => {
    const layers = [];
    for (let e = element; e; e = e.parentElement) {
      const c = parse(getComputedStyle(e).backgroundColor);
      if (c && c.a > 0) { layers.push(c); if (c.a >= 1) break; }
    }
    let result = {r: 255, g: 255, b: 255, a: 1};
    for (const layer of layers.reverse()) result = over(layer, result);
    return result;
  };
  const failures = [];
  let checked = 0;
  for (const element of document.body.querySelectorAll("*")) {
    const own = [...element.childNodes].some(
      (n) => n.nodeType === Node.TEXT_NODE && n.textContent.trim() !== "");
    if (!own || element.getClientRects().length === 0) continue;
    const style = getComputedStyle(element);
    if (style.visibility === "hidden" || style.display === "none") continue;
    const bg = backgroundOf(element);
    const fg = over(parse(style.color), bg);
    const size = parseFloat(style.fontSize);
    const bold = parseInt(style.fontWeight, 10) >= 700;
    const needed = size >= 24 || (size >= 18.66 && bold) ? 3 : 4.5;
    const got = ratio(fg, bg);
    checked += 1;
    if (got < needed) {
      failures.push({tag: element.tagName, text: element.textContent.trim().slice(0, 40),
                     color: style.color, background: JSON.stringify(bg),
                     ratio: Math.round(got * 100) / 100, needed});
    }
  }
  return {checked, failures};
}
"""

#: Markup rules: no inline script or style (the CSP would block them, and the page must
#: work without them), a language, a mobile viewport, a name for every control.
MARKUP_JS = """
() => {
  const problems = [];
  if (document.querySelectorAll("script:not([src])").length) problems.push("inline <script>");
  if (document.querySelectorAll("style").length) problems.push("inline <style> element");
  if (document.querySelectorAll("[style]").length) problems.push("style= attribute");
  for (const element of document.querySelectorAll("*")) {
    for (const attribute of element.attributes) {
      if (attribute.name.startsWith("on")) problems.push("event handler " + attribute.name);
    }
  }
  for (const link of document.querySelectorAll("a[href]")) {
    if (link.getAttribute("href").trim().toLowerCase().startsWith("javascript:"))
      problems.push("javascript: link");
  }
  const viewport = document.querySelector('meta[name="viewport"]');
  if (!viewport || !viewport.content.includes("width=device-width")) problems.push("no viewport");
  if (!document.title.trim()) problems.push("no <title>");
  if (!document.querySelector("h1")) problems.push("no <h1>");
  const controls = document.querySelectorAll(
    "button, select, textarea, input:not([type=hidden])");
  for (const control of controls) {
    const labelled = (control.labels && control.labels.length) ||
      control.getAttribute("aria-label") || control.getAttribute("aria-labelledby") ||
      (control.tagName === "BUTTON" && control.textContent.trim()) ||
      (control.type === "submit" && control.value);
    if (!labelled) problems.push("control without a name: " + control.outerHTML.slice(0, 80));
  }
  // Against the device's width: a mobile browser widens its layout viewport to fit.
  const overflow = document.documentElement.scrollWidth - screen.width;
  if (overflow > 1) problems.push("horizontal scrolling: " + overflow + "px too wide");
  return {lang: document.documentElement.lang, problems};
}
"""


@dataclass
class PageWatch:
    """Records what the browser reports while a test walks the pages of one tab."""

    console_errors: list[str] = field(default_factory=list)
    documents: list[Any] = field(default_factory=list)

    def attach(self, page: Any) -> None:
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.console_errors.append(f"pageerror: {error}"))
        page.on("response", self._response)

    def _console(self, message: Any) -> None:
        url = message.location.get("url", "")
        if message.type == "error" and not url.endswith("/favicon.ico"):
            # The browser asks every origin for a favicon by itself; no page links one.
            self.console_errors.append(f"{message.text} [{url}]")

    def _response(self, response: Any) -> None:
        request = response.request
        if request.resource_type == "document" and request.frame == request.frame.page.main_frame:
            self.documents.append(response)

    def last_document(self) -> Any:
        assert self.documents, "no document was loaded"
        return self.documents[-1]


def check_page(page: Any, watch: PageWatch, locale: str, *, dark_mode: bool = True) -> None:
    """Assert the rules above for the page now shown, in light and (if styled) dark mode."""
    response = watch.last_document()
    csp = response.all_headers().get("content-security-policy", "")
    assert "default-src 'none'" in csp, f"{page.url}: weak or missing CSP {csp!r}"
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, csp
    markup = page.evaluate(MARKUP_JS)
    assert markup["problems"] == [], f"{page.url}: {markup['problems']}"
    assert markup["lang"] == locale, f"{page.url}: lang={markup['lang']!r}, wanted {locale}"
    schemes = ("light", "dark") if dark_mode else ("light",)
    for scheme in schemes:
        page.emulate_media(color_scheme=scheme)
        contrast = page.evaluate(CONTRAST_JS)
        assert contrast["checked"] > 0, f"{page.url}: no text found"
        assert contrast["failures"] == [], f"{page.url} ({scheme}): {contrast['failures']}"
    page.emulate_media(color_scheme="light")
    blocked = [text for text in watch.console_errors if "Content Security Policy" in text]
    assert blocked == [], f"{page.url}: the CSP blocked something: {blocked}"
    assert watch.console_errors == [], f"{page.url}: console errors {watch.console_errors}"


def shoot(page: Any, directory: Path, name: str) -> Path:
    """A full-page PNG; the name says locale, viewport and step."""
    path = directory / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
