"""Apache httpd with mod_auth_openidc as the relying party: interop issue point 2.

Debian's ``apache2`` and ``libapache2-mod-auth-openidc`` (``.ci/run`` installs them)
run a throw-away server from a config generated here: a ``/protected`` location behind
``AuthType openid-connect`` whose CGI script prints what the application sees
(``REMOTE_USER``, ``OIDC_CLAIM_*``). The test is the browser: a cookie jar that walks
Apache → broker → emulator (auto_login) → broker → Apache, then logs out through
mod_auth_openidc's ``?logout=`` and checks the broker session and tokens are gone.
"""

from __future__ import annotations

import html
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import requests

from tests.conftest import Pair, start_pair
from tests.interop.conftest import NICKNAME, USER, require_tool, wait_for_http, walk
from tests.servers import free_port

MODULES = Path("/usr/lib/apache2/modules")
CLIENT_ID = "mod-auth-openidc"

# The modules this config needs; core, so, http, log_config, unixd are compiled in.
LOAD = ["mpm_prefork", "authn_core", "authz_core", "authz_user", "mime", "dir", "alias", "cgi"]

#: The exact RP configuration (docs/interop.md quotes it); {placeholders} are filled below.
OIDC_CONFIG = """\
OIDCProviderMetadataURL {issuer}/.well-known/openid-configuration
OIDCClientID {client_id}
OIDCClientSecret {client_secret}
OIDCProviderTokenEndpointAuth client_secret_basic
OIDCRedirectURI {base}/protected/redirect_uri
OIDCCryptoPassphrase {passphrase}
OIDCScope "openid profile"
OIDCPKCEMethod S256
OIDCRemoteUserClaim sub
OIDCPassClaimsAs environment
OIDCDefaultLoggedOutURL {base}/loggedout.html

<Location /protected>
    AuthType openid-connect
    Require valid-user
</Location>
"""

SERVER_CONFIG = """\
ServerRoot "{root}"
ServerName 127.0.0.1:{port}
Listen 127.0.0.1:{port}
PidFile "{root}/httpd.pid"
DefaultRuntimeDir "{root}"
ErrorLog "{root}/error.log"
LogLevel warn auth_openidc:debug
LogFormat "%h %u \\"%r\\" %>s" brief
CustomLog "{root}/access.log" brief
{user}
StartServers 1
MinSpareServers 1
MaxSpareServers 4
MaxRequestWorkers 8
TypesConfig /etc/mime.types
DocumentRoot "{root}/htdocs"
<Directory "{root}/htdocs">
    Require all granted
</Directory>
ScriptAlias /protected/ "{root}/cgi-bin/"
<Directory "{root}/cgi-bin">
    Options +ExecCGI
</Directory>
DirectoryIndex claims
"""

#: What the "application" prints: the variables mod_auth_openidc gave it.
CGI = """\
#!/bin/sh
printf 'Content-Type: text/plain; charset=utf-8\\r\\n\\r\\n'
env | grep -E '^(REMOTE_USER|AUTH_TYPE|OIDC_)' | sort
"""


class Httpd:
    """A foreground Apache started by this test, in a directory the worker user can read."""

    def __init__(self, apache2: str, pair: Pair, port: int, secret: str) -> None:
        # pytest's tmp_path is 0700 root: the www-data worker could not run the CGI there.
        self.root = Path(tempfile.mkdtemp(prefix="interop-httpd-"))
        self.root.chmod(0o755)
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        (self.root / "htdocs").mkdir()
        (self.root / "htdocs" / "loggedout.html").write_text("logged out\n")
        (self.root / "cgi-bin").mkdir()
        script = self.root / "cgi-bin" / "claims"
        script.write_text(CGI)
        script.chmod(0o755)
        self.oidc_config = OIDC_CONFIG.format(
            issuer=pair.broker.issuer,
            client_id=CLIENT_ID,
            client_secret=secret,
            base=self.base,
            passphrase=secrets.token_urlsafe(32),
        )
        # Apache refuses to serve as root; Debian's package creates www-data.
        user = "User www-data\nGroup www-data" if os.geteuid() == 0 else ""
        if user:
            pwd.getpwnam("www-data")
        loads = "".join(f"LoadModule {m}_module {MODULES}/mod_{m}.so\n" for m in LOAD)
        loads += f"LoadModule auth_openidc_module {MODULES}/mod_auth_openidc.so\n"
        config = loads + SERVER_CONFIG.format(root=self.root, port=port, user=user)
        (self.root / "httpd.conf").write_text(config + self.oidc_config)
        env = {**os.environ, "APACHE_RUN_DIR": str(self.root), "APACHE_LOCK_DIR": str(self.root)}
        # A session of its own: on SIGTERM the prefork parent signals its whole process
        # group, which would otherwise include pytest.
        self.process = subprocess.Popen(
            [apache2, "-f", str(self.root / "httpd.conf"), "-DFOREGROUND"],
            env=env,
            start_new_session=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            wait_for_http(f"{self.base}/loggedout.html")
        except AssertionError:
            self.stop()
            raise

    def log(self) -> str:
        """Apache's error log, for failure messages (mod_auth_openidc logs each step)."""
        path = self.root / "error.log"
        return path.read_text(errors="replace")[-6000:] if path.exists() else "(no error.log)"

    def access_log(self) -> str:
        """Apache's access log: ``client user "request line" status`` per line."""
        path = self.root / "access.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def apache2() -> str:
    # Debian puts it in /usr/sbin, which a non-login PATH may lack.
    if Path("/usr/sbin/apache2").exists():
        path = "/usr/sbin/apache2"
    else:
        path = require_tool("apache2", "apt-get install apache2 libapache2-mod-auth-openidc")
    if not (MODULES / "mod_auth_openidc.so").exists():
        pytest.skip("mod_auth_openidc missing: apt-get install libapache2-mod-auth-openidc")
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, apache2: str) -> Iterator[tuple[Pair, Httpd]]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    secret = secrets.token_urlsafe(32)
    clients = [
        {
            "client_id": CLIENT_ID,
            "client_secret": secret,
            "redirect_uris": [f"{base}/protected/redirect_uri"],
            "token_endpoint_auth_method": "client_secret_basic",
            "post_logout_redirect_uris": [f"{base}/loggedout.html"],
            # mod_auth_openidc's back-channel receiver is its redirect URI (recipe).
            "backchannel_logout_uri": f"{base}/protected/redirect_uri?logout=backchannel",
        }
    ]
    pair = start_pair(tmp_path_factory.mktemp("mod-auth-openidc"), clients=clients)
    try:
        httpd = Httpd(apache2, pair, port, secret)
    except BaseException:
        pair.stop()
        raise
    yield pair, httpd
    httpd.stop()
    pair.stop()


def variables(page: str) -> dict[str, str]:
    """The CGI page's ``NAME=value`` lines."""
    return dict(line.split("=", 1) for line in page.splitlines() if "=" in line)


def test_login_shows_the_claims_and_logout_ends_both_sessions(setup: tuple[Pair, Httpd]) -> None:
    pair, httpd = setup
    pair.emulator.control(auto_login=USER)
    browser = requests.Session()
    issuer = pair.broker.issuer

    # Login: Apache → broker /authorize → emulator → broker /qq/callback → Apache → page.
    page, visited = walk(browser, f"{httpd.base}/protected/")
    assert page.status_code == 200, (visited, page.text[:500], httpd.log())
    assert any(u.startswith(f"{issuer}/authorize?") for u in visited), visited
    assert any(u.startswith(pair.emulator.url) for u in visited), visited
    assert any(u.startswith(f"{httpd.base}/protected/redirect_uri?") for u in visited), visited
    seen = variables(page.content.decode("utf-8"))
    openid = pair.emulator.user(USER)["openid"]
    assert seen["REMOTE_USER"] == openid, seen
    assert seen["OIDC_CLAIM_sub"] == openid
    assert seen["OIDC_CLAIM_iss"] == issuer
    assert seen["OIDC_CLAIM_nickname"] == NICKNAME
    assert seen["OIDC_CLAIM_name"] == NICKNAME
    assert seen["OIDC_CLAIM_picture"].startswith("https://")
    access_token = seen["OIDC_access_token"]
    userinfo = requests.get(
        f"{issuer}/userinfo", headers={"Authorization": f"Bearer {access_token}"}, timeout=10
    )
    assert userinfo.status_code == 200 and userinfo.json()["sub"] == openid

    # Apache's own session: the next request is served without a trip to the broker.
    again = browser.get(f"{httpd.base}/protected/", allow_redirects=False, timeout=10)
    assert again.status_code == 200 and variables(again.text)["REMOTE_USER"] == openid

    # RP-initiated logout through mod_auth_openidc: it revokes, then sends the browser to
    # the broker's end_session_endpoint with id_token_hint; the broker ends its session
    # without asking (valid hint, same browser) and returns to the registered URL.
    logged_out = f"{httpd.base}/loggedout.html"
    logout = f"{httpd.base}/protected/redirect_uri?logout={quote(logged_out, safe='')}"
    done, visited = walk(browser, logout)
    assert done.status_code == 200 and done.url == logged_out, (visited, httpd.log())
    ends = [u for u in visited if u.startswith(f"{issuer}/logout?")]
    assert ends and "id_token_hint=" in ends[0], visited
    userinfo = requests.get(
        f"{issuer}/userinfo", headers={"Authorization": f"Bearer {access_token}"}, timeout=10
    )
    assert userinfo.status_code == 401

    # Both sessions are gone: Apache sends the browser to the broker, and the broker
    # (no SSO session any more) sends it on to QQ instead of straight back.
    response, visited = walk(
        browser, f"{httpd.base}/protected/", lambda u: u.startswith(pair.emulator.url)
    )
    assert response.headers["Location"].startswith(pair.emulator.url), visited
    assert visited[1].startswith(f"{issuer}/authorize?"), visited


def test_backchannel_logout_at_the_broker_ends_the_apache_session(
    setup: tuple[Pair, Httpd],
) -> None:
    """Logging out at the broker (not through Apache) reaches mod_auth_openidc's
    back-channel receiver: it accepts the broker's logout token and drops the session."""
    pair, httpd = setup
    pair.emulator.control(auto_login=USER)
    browser = requests.Session()
    page, visited = walk(browser, f"{httpd.base}/protected/")
    assert page.status_code == 200, (visited, httpd.log())

    accepted = '"POST /protected/redirect_uri?logout=backchannel HTTP/1.1" 200'
    before = httpd.access_log().count(accepted)  # the first test's logout sent one too

    # Logout at the broker without a hint: it asks first (Logout 1.0 §6), then ends the session.
    issuer = pair.broker.issuer
    confirm_page = browser.get(f"{issuer}/logout", timeout=10)
    fields = re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', confirm_page.text)
    form = {name: html.unescape(value) for name, value in fields}
    assert "confirm" in form, confirm_page.text[:500]
    done = browser.post(f"{issuer}/logout", data=form, allow_redirects=False, timeout=10)
    assert done.status_code == 200, done.text[:300]

    # The broker delivers in the background: wait (bounded) until Apache has logged the
    # logout token it accepted, i.e. the handler that drops the session has finished.
    for _ in range(200):
        if httpd.access_log().count(accepted) > before:
            break
        time.sleep(0.05)
    assert httpd.access_log().count(accepted) > before, (httpd.access_log(), httpd.log())

    response = browser.get(f"{httpd.base}/protected/", allow_redirects=False, timeout=10)
    assert response.status_code == 302, httpd.log()
    assert response.headers["Location"].startswith(f"{issuer}/authorize?")
