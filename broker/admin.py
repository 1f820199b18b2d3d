"""Operator commands on what the database holds: ``clients``, ``tokens revoke``, ``users show``.

``broker/cli.py`` only hooks these into the ``qq-oidc-broker`` command; docs/admin.md
shows each command with an example and its ``--json`` shape. Why they work this way:

* **Config clients stay in the config.** ``clients add`` registers a client in the
  database (``source: cli``); an id the config (or the database) already has is
  refused. Config clients are listed and shown, but removing one or changing its
  secret means editing the config: the file stays the truth for what it defines.
* **The same rules as the config.** A new client is validated by
  :func:`broker.config.parse_client` with the running config (URIs, methods, the
  production checks), and re-validated by every broker that loads it.
* **A secret is shown once.** Confidential clients get a random secret of 256 bits,
  printed once; only its SHA-256 digest is stored (a token request must not pay for a
  password hash, DESIGN.md). Nothing else here ever prints a secret, token or digest.
* **Running brokers follow.** Every instance sees an added or removed client within
  :data:`broker.oidc.registry.CLIENT_CACHE_SECONDS`; a rotated or removed client's old
  secret is refused at once (secrets are checked against the database, never cached),
  and removing a client revokes its tokens in the same transaction.
"""

from __future__ import annotations

import argparse
import dataclasses
import secrets
import sys
import time
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

from broker.cli import (
    EXIT_CHECK_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    _load,
    _open_store,
    _report,
    _storage_call,
    _when,
)
from broker.config import (
    CLIENT_SUBJECTS,
    EMAIL_POLICIES,
    ClientConfig,
    Config,
    ConfigError,
    parse_client,
)
from broker.oidc.registry import (
    CLIENT_CACHE_SECONDS,
    STORED_SOURCE,
    client_metadata,
    stored_client_config,
)
from broker.storage.base import ClientRecord, Revocation, Store, UserRecord, digest

#: What a client added here may use; ``private_key_jwt`` needs keys: register it in the config.
AUTH_METHODS = ("client_secret_basic", "client_secret_post", "none")
#: secrets.token_urlsafe(32): 256 random bits (DESIGN.md asks for at least 128).
SECRET_BYTES = 32


class _OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line on stderr (exit 2), like every failure an operator can fix."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see --help)\n")


def add_commands(commands: Any, config_option: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``clients``, ``tokens`` and ``users`` to the command's subparsers."""
    handlers: list[tuple[argparse.ArgumentParser, Callable[[argparse.Namespace], int]]] = []

    clients = commands.add_parser(
        "clients", help="relying parties: list the config's, add more in the database"
    )
    actions = clients.add_subparsers(
        dest="clients_command", metavar="ACTION", required=True, parser_class=_OneLineParser
    )
    add_help = (
        "register a client in the database (every broker sharing it accepts the client within "
        f"{CLIENT_CACHE_SECONDS:g} s); a confidential client's secret is printed once"
    )
    add = actions.add_parser("add", help=add_help, description=add_help)
    add.add_argument("client_id", metavar="CLIENT_ID")
    add.add_argument(
        "--redirect-uri",
        dest="redirect_uris",
        action="append",
        required=True,
        metavar="URI",
        help="exact redirect URI (repeatable)",
    )
    add.add_argument(
        "--auth-method",
        choices=AUTH_METHODS,
        default="client_secret_basic",
        help="token_endpoint_auth_method; none: a public client (PKCE) [client_secret_basic]",
    )
    add.add_argument(
        "--grant",
        dest="grants",
        action="append",
        choices=("refresh_token",),
        default=[],
        help="also issue refresh tokens (with offline_access)",
    )
    add.add_argument(
        "--post-logout-redirect-uri",
        dest="post_logout_redirect_uris",
        action="append",
        default=[],
        metavar="URI",
        help="where RP-initiated logout may return (repeatable)",
    )
    add.add_argument("--backchannel-logout-uri", metavar="URI")
    add.add_argument("--subject", choices=CLIENT_SUBJECTS, help="what sub is [upstream.qq.subject]")
    add.add_argument(
        "--sector-identifier-uri", metavar="URI", help="pairwise sector (several redirect hosts)"
    )
    add.add_argument("--email", choices=EMAIL_POLICIES, help="email claim policy [omit]")
    handlers.append((add, cmd_clients_add))

    listing = actions.add_parser("list", help="every client: id, source, method, redirect URIs")
    handlers.append((listing, cmd_clients_list))
    show = actions.add_parser("show", help="one client's settings (never its secret)")
    show.add_argument("client_id", metavar="CLIENT_ID")
    handlers.append((show, cmd_clients_show))
    remove_help = "delete a database client and revoke its tokens (config clients: edit the config)"
    remove = actions.add_parser("remove", help=remove_help, description=remove_help)
    remove.add_argument("client_id", metavar="CLIENT_ID")
    handlers.append((remove, cmd_clients_remove))
    rotate_help = "give a database client a new secret, printed once; the old one stops at once"
    rotate = actions.add_parser("rotate-secret", help=rotate_help, description=rotate_help)
    rotate.add_argument("client_id", metavar="CLIENT_ID")
    handlers.append((rotate, cmd_clients_rotate_secret))

    tokens = commands.add_parser("tokens", help="revoke tokens in bulk")
    token_actions = tokens.add_subparsers(
        dest="tokens_command", metavar="ACTION", required=True, parser_class=_OneLineParser
    )
    revoke_help = (
        "revoke every access and refresh token of a client or of a user (--sub also ends the "
        "user's broker sessions, so single sign-on does not hand out new ones)"
    )
    revoke = token_actions.add_parser("revoke", help=revoke_help, description=revoke_help)
    whose = revoke.add_mutually_exclusive_group(required=True)
    whose.add_argument("--client", metavar="CLIENT_ID", help="all tokens of this client")
    whose.add_argument("--sub", metavar="SUB", help="all tokens of this user: OpenID or UnionID")
    handlers.append((revoke, cmd_tokens_revoke))

    users = commands.add_parser("users", help="what the broker knows about a user")
    user_actions = users.add_subparsers(
        dest="users_command", metavar="ACTION", required=True, parser_class=_OneLineParser
    )
    user_show = user_actions.add_parser(
        "show", help="profile, live sessions and token counts per client (never the tokens)"
    )
    user_show.add_argument("sub", metavar="SUB", help="the user's OpenID or UnionID")
    handlers.append((user_show, cmd_users_show))

    for action, handler in handlers:
        config_option(action)
        action.add_argument("--json", action="store_true", help="machine-readable output")
        action.set_defaults(handler=handler)


# --------------------------------------------------------------------------- plumbing


@contextmanager
def _database(args: argparse.Namespace) -> Iterator[tuple[Config, Store]]:
    """The config and its store, refusing a schema this version cannot use (like ``keys``)."""
    config = _load(args)
    store: Store = _storage_call(_open_store, config)
    try:
        current, head = _storage_call(store.schema_revision)
        if current != head:
            raise UsageError(
                f"the database schema is at revision {current or 'none (empty database)'}, "
                f"this version needs {head}: run `qq-oidc-broker db upgrade`"
            )
        yield config, store
    finally:
        store.close()


def _now() -> int:
    return int(time.time())


def _printable(value: Any) -> str:
    """Text for a terminal: QQ nicknames are untrusted, so control characters (escape
    sequences, bidi overrides) are shown as ``?`` instead of acting on the terminal."""
    text = "" if value is None else str(value)
    return "".join("?" if unicodedata.category(ch) in {"Cc", "Cf"} else ch for ch in text)


def _refuse_references(values: list[str | None]) -> None:
    """A stored client is literal: ``${VAR}`` would mean one thing here and another (or
    nothing) on each broker, so it is refused rather than expanded."""
    if any(value is not None and "${" in value for value in values):
        raise UsageError("clients add: values are stored literally; ${...} is not allowed here")


def _describe(client: ClientConfig, source: str, config: Config) -> dict[str, Any]:
    """A client's settings as shown: every option, the effective defaults, no secret."""
    values = dataclasses.asdict(client)
    values.pop("client_secret")
    values = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
    values["subject"] = client.subject or config.upstream.qq.subject
    values["id_token_signed_response_alg"] = (
        client.id_token_signed_response_alg or config.keys.algorithm
    )
    return {"client_id": client.client_id, "source": source, **values}


def _settings_text(described: dict[str, Any]) -> str:
    lines = []
    for key, value in described.items():
        if value is None or value == []:
            continue
        shown = ", ".join(map(str, value)) if isinstance(value, list) else value
        lines.append(f"{key}: {_printable(shown)}")
    return "\n".join(lines)


def _revocation_text(revoked: Revocation) -> str:
    text = (
        f"{revoked.access_tokens} access token(s), {revoked.refresh_tokens} refresh token(s), "
        f"{revoked.codes} unredeemed code(s)"
    )
    return text + (f", {revoked.sessions} session(s) ended" if revoked.sessions else "")


def _config_client_refusal(config: Config, client_id: str, action: str) -> UsageError:
    return UsageError(
        f"client {client_id!r} is defined in the config ({config.source}): {action} there and "
        "restart the brokers"
    )


def _stored(store: Store, client_id: str) -> ClientRecord:
    """The database client ``client_id``, or a usage error saying what there is instead."""
    record: ClientRecord | None = _storage_call(store.get_client, client_id)
    if record is None:
        raise UsageError(f"no client {client_id!r} (see `qq-oidc-broker clients list`)")
    if record.source != STORED_SOURCE:
        raise UsageError(
            f"client {client_id!r} comes from another broker's config file, not from "
            "`clients add`: change it in that config"
        )
    return record


def _new_secret() -> str:
    return secrets.token_urlsafe(SECRET_BYTES)


def _print_secret_note() -> None:
    """The once-only warning goes to stderr, so ``--json`` stdout stays one object."""
    print(
        "Store the client secret now: it is shown only this once (the broker keeps a digest).",
        file=sys.stderr,
    )


# --------------------------------------------------------------------------- clients


def cmd_clients_add(args: argparse.Namespace) -> int:
    with _database(args) as (config, store):
        client_id: str = args.client_id
        uris = [*args.redirect_uris, *args.post_logout_redirect_uris]
        _refuse_references(
            [client_id, *uris, args.backchannel_logout_uri, args.sector_identifier_uri]
        )
        if config.client(client_id) is not None:
            raise UsageError(
                f"client {client_id!r} is already defined in the config ({config.source})"
            )
        secret = None if args.auth_method == "none" else _new_secret()
        data = {
            "client_id": client_id,
            "client_secret": secret,
            "redirect_uris": list(args.redirect_uris),
            "token_endpoint_auth_method": args.auth_method,
            "grant_types": ["authorization_code", *dict.fromkeys(args.grants)],
            "post_logout_redirect_uris": list(args.post_logout_redirect_uris) or None,
            "backchannel_logout_uri": args.backchannel_logout_uri,
            "subject": args.subject,
            "sector_identifier_uri": args.sector_identifier_uri,
            "email": args.email,
        }
        parsed = parse_client(
            {k: v for k, v in data.items() if v is not None}, config, source="clients add"
        )
        record = ClientRecord(
            client_id,
            digest(secret) if secret else None,
            client_metadata(parsed),
            STORED_SOURCE,
        )
        if not _storage_call(store.add_client, record, _now()):
            existing: ClientRecord | None = _storage_call(store.get_client, client_id)
            from_config = existing is not None and existing.source == "config"
            origin = "a broker's config" if from_config else "`clients add`"
            raise UsageError(f"client {client_id!r} already exists in the database (from {origin})")
        described = _describe(parsed, STORED_SOURCE, config)
        lines = [
            f"added client {client_id} ({parsed.token_endpoint_auth_method}); brokers accept it "
            f"within {CLIENT_CACHE_SECONDS:g} s",
            _settings_text(described),
        ]
        if secret is not None:
            lines.append(f"client_secret: {secret}")
        _report(args, {**described, "client_secret": secret}, "\n".join(lines))
        if secret is not None:
            _print_secret_note()
    return EXIT_OK


def cmd_clients_list(args: argparse.Namespace) -> int:
    with _database(args) as (config, store):
        rows: list[dict[str, Any]] = [
            {
                "client_id": client.client_id,
                "source": "config",
                "token_endpoint_auth_method": client.token_endpoint_auth_method,
                "redirect_uris": list(client.redirect_uris),
            }
            for client in config.clients
        ]
        records: list[ClientRecord] = _storage_call(store.list_clients)
        rows += [
            {
                "client_id": record.client_id,
                "source": STORED_SOURCE,
                "token_endpoint_auth_method": record.metadata.get("token_endpoint_auth_method"),
                "redirect_uris": list(record.metadata.get("redirect_uris", [])),
            }
            for record in records
            # The config wins for an id in both (its next start turns the row into config's).
            if record.source == STORED_SOURCE and config.client(record.client_id) is None
        ]
    width = max([len(row["client_id"]) for row in rows] + [9])
    lines = [f"{'CLIENT_ID':<{width}}  SOURCE  AUTH METHOD          REDIRECT URIS"]
    lines += [
        f"{row['client_id']:<{width}}  {row['source']:<6}  "
        f"{_printable(row['token_endpoint_auth_method']):<19}  "
        f"{_printable(' '.join(row['redirect_uris']))}"
        for row in rows
    ]
    _report(args, {"clients": rows}, "\n".join(lines))
    return EXIT_OK


def cmd_clients_show(args: argparse.Namespace) -> int:
    client_id: str = args.client_id
    with _database(args) as (config, store):
        configured = config.client(client_id)
        if configured is not None:
            described = _describe(configured, "config", config)
            _report(args, described, _settings_text(described))
            return EXIT_OK
        record = _stored(store, client_id)
    try:
        parsed = stored_client_config(record, config)
    except ConfigError as err:
        # Brokers ignore such a client (and log it); show what is stored and why.
        data = {
            "client_id": client_id,
            "source": STORED_SOURCE,
            **record.metadata,
            "problem": err.problem if err.path == "" else f"{err.path}: {err.problem}",
        }
        _report(args, data, _settings_text(data))
        return EXIT_CHECK_FAILED
    described = _describe(parsed, STORED_SOURCE, config)
    _report(args, described, _settings_text(described))
    return EXIT_OK


def cmd_clients_remove(args: argparse.Namespace) -> int:
    client_id: str = args.client_id
    with _database(args) as (config, store):
        if config.client(client_id) is not None:
            raise _config_client_refusal(config, client_id, "remove it")
        _stored(store, client_id)
        revoked: Revocation | None = _storage_call(store.delete_client, client_id, _now())
        if revoked is None:  # removed by someone else meanwhile
            raise UsageError(f"no client {client_id!r} (see `qq-oidc-broker clients list`)")
    text = (
        f"removed client {client_id}; revoked {_revocation_text(revoked)}. Brokers refuse its "
        f"secret now and the client within {CLIENT_CACHE_SECONDS:g} s"
    )
    _report(args, {"client_id": client_id, "removed": True, **_revocation_data(revoked)}, text)
    return EXIT_OK


def cmd_clients_rotate_secret(args: argparse.Namespace) -> int:
    client_id: str = args.client_id
    with _database(args) as (config, store):
        if config.client(client_id) is not None:
            raise _config_client_refusal(config, client_id, "change its client_secret")
        record = _stored(store, client_id)
        if record.secret_digest is None:
            raise UsageError(
                f"client {client_id!r} is a public client (token_endpoint_auth_method: "
                f"{record.metadata.get('token_endpoint_auth_method')}): it has no secret"
            )
        secret = _new_secret()
        if not _storage_call(store.set_client_secret, client_id, digest(secret)):
            raise UsageError(f"no client {client_id!r} (see `qq-oidc-broker clients list`)")
    text = (
        f"new secret for {client_id}; the old one is refused from now on\nclient_secret: {secret}"
    )
    _report(args, {"client_id": client_id, "client_secret": secret}, text)
    _print_secret_note()
    return EXIT_OK


# --------------------------------------------------------------------------- tokens, users


def _revocation_data(revoked: Revocation) -> dict[str, Any]:
    return {"revoked": dataclasses.asdict(revoked)}


def _find_user(store: Store, sub: str) -> tuple[UserRecord, str]:
    """The user whose OpenID, else UnionID, is ``sub``, and which of the two matched."""
    user: UserRecord | None = _storage_call(store.get_user, sub)
    if user is not None:
        return user, "openid"
    user = _storage_call(store.find_user_by_unionid, sub)
    if user is not None:
        return user, "unionid"
    raise UsageError(
        f"no user with the OpenID or UnionID {sub!r} (a pairwise sub cannot be looked up)"
    )


def cmd_tokens_revoke(args: argparse.Namespace) -> int:
    with _database(args) as (config, store):
        if args.client is not None:
            client_id: str = args.client
            known = config.client(client_id) is not None or (
                _storage_call(store.get_client, client_id) is not None
            )
            revoked: Revocation = _storage_call(store.revoke_client_tokens, client_id, _now())
            data: dict[str, Any] = {"client_id": client_id, "known_client": known}
            text = f"client {client_id}: revoked {_revocation_text(revoked)}"
            if not known:
                text += " (no such client is registered now)"
        else:
            user, matched = _find_user(store, args.sub)
            revoked = _storage_call(store.revoke_user_tokens, user.user_id, _now())
            data = {"user_id": user.user_id, "matched": matched}
            how = "OpenID" if matched == "openid" else f"UnionID, OpenID {user.user_id}"
            text = f"user {args.sub} ({how}): revoked {_revocation_text(revoked)}"
    _report(args, {**data, **_revocation_data(revoked)}, text)
    return EXIT_OK


def cmd_users_show(args: argparse.Namespace) -> int:
    now = _now()
    with _database(args) as (_, store):
        user, matched = _find_user(store, args.sub)
        activity = _storage_call(store.user_activity, user.user_id, now)
        upstream = _storage_call(store.get_upstream_tokens, user.user_id)
    clients = [dataclasses.asdict(client) for client in activity.clients]
    data = {
        "user_id": user.user_id,
        "unionid": user.unionid,
        "matched": matched,
        "profile": dict(user.profile),
        "updated_at": user.updated_at,
        "sessions": activity.sessions,
        "clients": clients,
        # When the kept QQ tokens expire (never the tokens themselves).
        "upstream_tokens_expire_at": upstream[1] if upstream else None,
    }
    profile = user.profile
    lines = [
        f"user {user.user_id} (matched by {'OpenID' if matched == 'openid' else 'UnionID'})",
        f"unionid: {_printable(user.unionid or '-')}",
        f"nickname: {_printable(profile.get('nickname') or '-')}",
        f"picture: {_printable(profile.get('picture') or '-')}",
        f"profile updated: {_when(user.updated_at)} (its last QQ login)",
        f"live sessions: {activity.sessions}",
    ]
    lines += [
        f"client {c['client_id']}: {c['sessions']} session(s), {c['access_tokens']} access "
        f"token(s), {c['refresh_tokens']} refresh token(s)"
        for c in clients
    ]
    if upstream:
        lines.append(f"QQ tokens kept until {_when(upstream[1])}")
    _report(args, data, "\n".join(lines))
    return EXIT_OK
