"""The ``qq-oidc-broker`` command (DESIGN.md "Command line").

Exit status: 0 success, 1 a check failed, 2 bad usage or config. Every
failure the operator can fix is one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import secrets
import shutil
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from broker.config import Config, ConfigError, load_config, parse_config, resolve_config_path

EXIT_OK, EXIT_CHECK_FAILED, EXIT_USAGE = 0, 1, 2

log = logging.getLogger("broker.cli")


class UsageError(Exception):
    """Bad arguments or a broker that cannot start: exit status 2."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    _configure_logging()
    try:
        result: int = args.handler(args)
        return result
    except (ConfigError, UsageError) as err:
        print(f"qq-oidc-broker: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK


def _configure_logging(settings: Any = None) -> None:
    """Text logs at INFO, or ``settings`` (a LoggingConfig: ``serve`` passes the config's
    once it is loaded); the libraries that print secrets at DEBUG are held at INFO.

    Authlib logs issued tokens at DEBUG and urllib3 logs request lines with
    their query (QQ's /me and get_user_info carry the QQ access token there).
    """
    from broker.logs import configure_logging

    if settings is None:
        configure_logging()
    else:
        configure_logging(settings.format, settings.level)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qq-oidc-broker", description="Login with QQ behind any OpenID Connect relying party."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the production server")
    _config_option(serve)
    serve.set_defaults(handler=cmd_serve)

    check = commands.add_parser("check", help="validate the config and exit")
    _config_option(check)
    check.set_defaults(handler=cmd_check)

    db = commands.add_parser("db", help="database schema and housekeeping")
    db_commands = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    for name, handler, text in (
        ("upgrade", cmd_db_upgrade, "migrate the database to this version's schema"),
        ("status", cmd_db_status, "show the schema revision (exit 1 when an upgrade is due)"),
        ("purge", cmd_db_purge, "delete expired logins, codes, sessions and tokens now"),
    ):
        action = db_commands.add_parser(name, help=text)
        _config_option(action)
        action.add_argument("--json", action="store_true", help="machine-readable output")
        action.set_defaults(handler=handler)
    _add_keys_commands(commands)
    _add_doctor_command(commands)
    _add_admin_commands(commands)

    dev = commands.add_parser("dev", help="broker + QQ emulator + demo relying party on 127.0.0.1")
    dev.add_argument("--port", type=int, default=8000, help="broker port [8000]")
    dev.add_argument("--emulator-port", type=int, default=8001, help="QQ emulator port [8001]")
    dev.add_argument("--demo-port", type=int, default=9000, help="demo relying party port [9000]")
    dev.add_argument("--data-dir", default="dev-data", help="SQLite and keys [./dev-data]")
    dev.set_defaults(handler=cmd_dev)

    emulator = commands.add_parser("emulator", help="run the QQ Connect emulator alone")
    emulator.add_argument("--host", default="127.0.0.1")
    emulator.add_argument("--port", type=int, default=8001)
    emulator.add_argument(
        "--threads", type=int, default=8, help="server threads (raise for slow-QQ load tests) [8]"
    )
    emulator.add_argument("--users", help="YAML file of test users")
    emulator.add_argument("--config", help="take app id, key and callback from this broker config")
    emulator.add_argument("--app-id")
    emulator.add_argument("--app-key")
    emulator.add_argument(
        "--callback", action="append", help="registered callback URL (repeatable)"
    )
    emulator.add_argument(
        "--unionid", action="store_true", help="the app has UnionID enabled (else /me: 100048)"
    )
    emulator.set_defaults(handler=cmd_emulator)
    return parser


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="config file [$BROKER_CONFIG, else ./config.yaml]")


def _load(args: argparse.Namespace) -> Config:
    return load_config(resolve_config_path(args.config))


def cmd_check(args: argparse.Namespace) -> int:
    from broker.app import unenforced_settings

    config = _load(args)
    for note in unenforced_settings(config):
        print(f"warning: {note}", file=sys.stderr)
    mode = "development" if config.is_development else "production"
    print(f"{config.source}: OK ({mode}, issuer {config.issuer}, {len(config.clients)} client(s))")
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    config = _load(args)
    _configure_logging(config.logging)
    with contextlib.ExitStack() as at_exit:  # the parent's; a worker leaves with os._exit
        shared_counters = None
        if config.server.workers > 1:
            from broker.workers import prepare_metrics_dir, prepare_shared_counters

            metrics_dir = prepare_metrics_dir()  # before prometheus_client is imported
            if metrics_dir is not None:  # ours, not the operator's: the counters die with us
                at_exit.callback(shutil.rmtree, metrics_dir, ignore_errors=True)
            shared_counters = prepare_shared_counters(config)  # before the fork
            if shared_counters is not None:
                at_exit.callback(shutil.rmtree, shared_counters.parent, ignore_errors=True)
        from broker.metrics import MetricsSetupError
        from broker.serving import ServeError

        try:
            app = _build_app(config)  # also migrates and makes keys: once, before any fork
        except MetricsSetupError as err:
            raise UsageError(f"metrics: {err}") from err
        log.info("qq-oidc-broker serving %s", config.issuer)
        try:
            # Both return after SIGTERM/SIGINT and a drain: exit 0.
            if config.server.workers > 1:
                _release(app)
                _serve_workers(config, shared_counters)
            else:
                _serve_app(app, config)
        except ServeError as err:
            raise UsageError(f"server: {err}") from err
    return EXIT_OK


def _serve_app(app: Any, config: Config, sock: Any = None, metrics_sock: Any = None) -> None:
    from broker.serving import serve

    side = None
    if config.metrics.port:
        metrics_app = app.extensions["qq_oidc_broker.metrics"].wsgi_app()
        side = (metrics_app, config.metrics.host, config.metrics.port)
    serve(app, config.server, metrics=side, sock=sock, metrics_sock=metrics_sock)


def _serve_workers(config: Config, shared_counters: Path | None) -> None:
    from broker.workers import serve_workers

    def worker(sock: Any, metrics_sock: Any) -> None:
        # Opens the shared rate-limit table here, after the fork: one file lock per worker.
        _serve_app(_build_app(config, shared_counters), config, sock, metrics_sock)

    serve_workers(config, worker)


def _release(app: Any) -> None:
    """The parent's app only proved the config works: stop its thread, close its pool,
    so nothing of it crosses the fork."""
    app.extensions["qq_oidc_broker.housekeeper"].stop()
    app.extensions["qq_oidc_broker"].ctx.store.close()


def _open_store(config: Config) -> Any:
    """The configured store, for commands that work on the database without serving."""
    from broker.storage import SQLStore

    return SQLStore(config.storage.url, pool_size=1, max_overflow=0)


def _storage_call(function: Any, *args: Any) -> Any:
    from broker.storage import StorageError

    try:
        return function(*args)
    except StorageError as err:
        raise UsageError(f"storage.url: {err}") from err


def _report(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    print(json.dumps(data) if args.json else text)


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    store = _open_store(_load(args))
    before, _ = _storage_call(store.schema_revision)
    _storage_call(store.create_schema)
    after, head = _storage_call(store.schema_revision)
    text = (
        f"database schema already at {head}"
        if before == after
        else f"database schema upgraded from {before or 'empty'} to {after}"
    )
    _report(args, {"before": before, "after": after, "head": head}, text)
    return EXIT_OK


def cmd_db_status(args: argparse.Namespace) -> int:
    store = _open_store(_load(args))
    current, head = _storage_call(store.schema_revision)
    due = current != head
    text = f"schema {current or 'none (empty database)'}; this version needs {head}"
    if due:
        text += ": run `qq-oidc-broker db upgrade`"
    _report(args, {"current": current, "head": head, "upgrade_needed": due}, text)
    return EXIT_CHECK_FAILED if due else EXIT_OK


def cmd_db_purge(args: argparse.Namespace) -> int:
    store = _open_store(_load(args))
    removed = _storage_call(store.purge_expired, int(time.time()))
    _report(args, {"removed": removed}, f"removed {removed} expired row(s)")
    return EXIT_OK


def _add_admin_commands(commands: Any) -> None:
    """``clients``, ``tokens``, ``users``: their arguments and logic live in broker/admin.py."""
    from broker import admin

    admin.add_commands(commands, _config_option)


def _add_keys_commands(commands: Any) -> None:
    keys = commands.add_parser("keys", help="signing keys: list, rotate, withdraw")
    actions = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="show every signing key and its state")
    rotate = actions.add_parser(
        "rotate",
        help="schedule the next key of each algorithm: published now, signing after "
        "keys.rotation.publish_ahead",
    )
    retire_help = (
        "withdraw a key at once (e.g. a leaked key): it leaves /jwks.json immediately, so "
        "relying parties holding tokens signed by it will reject them"
    )
    retire = actions.add_parser("retire", help=retire_help, description=retire_help)
    retire.add_argument(
        "kid",
        help="the key's kid, or a unique prefix of 8+ characters (a kid may start with '-': "
        "write `keys retire -- KID` then)",
    )
    retire.add_argument(
        "--force",
        action="store_true",
        help="also when it is the key signing now and no next key is scheduled: a new key "
        "then signs at once, before relying parties have fetched it",
    )
    handlers = ((listing, cmd_keys_list), (rotate, cmd_keys_rotate), (retire, cmd_keys_retire))
    for action, handler in handlers:
        _config_option(action)
        action.add_argument("--json", action="store_true", help="machine-readable output")
        action.set_defaults(handler=handler)


def _add_doctor_command(commands: Any) -> None:
    doctor = commands.add_parser(
        "doctor", help="check a running deployment and QQ Connect; say what to fix (zh-CN, en)"
    )
    _config_option(doctor)
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    doctor.add_argument("--lang", choices=("zh-CN", "en"), help="one language [both]")
    doctor.add_argument(
        "--access-token",
        metavar="TOKEN",
        help="a QQ access token of this app, to check the UnionID permission ('-': read stdin)",
    )
    doctor.set_defaults(handler=cmd_doctor)


def cmd_doctor(args: argparse.Namespace) -> int:
    """Exit 0 when no check failed, 1 when one did; a bad config is exit 2 (main)."""
    from broker import doctor

    config = _load(args)
    token = sys.stdin.readline().strip() if args.access_token == "-" else args.access_token
    # The connector logs each QQ refusal; doctor reports it, so keep stderr for real errors.
    logging.getLogger("broker.connectors.qq").setLevel(logging.ERROR)
    results = doctor.run_checks(config, access_token=token or None)
    langs = (args.lang,) if args.lang else doctor.LANGS
    print(doctor.render_json(results) if args.json else doctor.render_text(results, langs))
    return doctor.exit_status(results)


def _key_call(function: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a key operation; what an operator must fix becomes one line (exit 2)."""
    from broker.keys import KeyStoreError
    from broker.storage import StorageError

    try:
        return function(*args, **kwargs)
    except KeyStoreError as err:
        raise UsageError(str(err)) from err
    except StorageError as err:
        raise UsageError(f"storage.url: {err}") from err


def _open_keyring(args: argparse.Namespace) -> Any:
    """The key ring as the config says (keys.dir, or the database), creating nothing."""
    from broker.keys import KeyRing

    config = _load(args)
    store = None
    if config.keys.storage == "database":
        store = _open_store(config)
        current, head = _storage_call(store.schema_revision)
        if current != head:
            raise UsageError(
                f"the database schema is at revision {current or 'none (empty database)'}, "
                f"this version needs {head}: run `qq-oidc-broker db upgrade`"
            )
    return _key_call(KeyRing.from_config, config.keys, config.lifetimes, store, create=False)


def _when(timestamp: int | None) -> str:
    if timestamp is None:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def cmd_keys_list(args: argparse.Namespace) -> int:
    ring = _open_keyring(args)
    now = int(time.time())
    statuses = ring.statuses(now)
    rows = [
        {
            "kid": s.key.kid,
            "alg": s.key.alg,
            "state": s.state,
            "published": s.published,
            "created_at": s.key.created_at,
            "activates_at": s.key.activates_at,
            "retired_at": s.key.retired_at,
            "unpublish_at": s.unpublish_at,
        }
        for s in statuses
    ]
    lines = [
        f"{row['alg']:<6} {row['state']:<9} {row['kid']}  created {_when(row['created_at'])}"
        f"  signs from {_when(row['activates_at'])}  unpublished {_when(row['unpublish_at'])}"
        for row in rows
    ]
    signing = {s.key.alg for s in statuses if s.state == "active"}
    lines += [f"{alg}: no signing key yet" for alg in ring.algorithms if alg not in signing]
    _report(args, {"now": now, "keys": rows}, "\n".join(lines))
    return EXIT_OK


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    ring = _open_keyring(args)
    now = int(time.time())
    rotations = _key_call(ring.rotate, now)
    lines = []
    for r in rotations:
        wait = f"{_when(r.activates_at)} (in {r.activates_at - now} s)"
        if not r.created:
            lines.append(f"{r.alg}: next key {r.kid} is already scheduled to sign from {wait}")
        elif r.activates_at <= now:
            lines.append(f"{r.alg}: new key {r.kid} signs from now (there was no usable key)")
        else:
            lines.append(
                f"{r.alg}: new key {r.kid} is published now and signs from {wait}; the "
                "current key stays published until the tokens it signed have expired"
            )
    _report(args, {"keys": [dataclasses.asdict(r) for r in rotations]}, "\n".join(lines))
    return EXIT_OK


def cmd_keys_retire(args: argparse.Namespace) -> int:
    ring = _open_keyring(args)
    now = int(time.time())
    done = _key_call(ring.retire, args.kid, now, force=args.force)
    key, successor = done.key, done.successor
    if done.already:
        text = f"{key.kid} ({key.alg}) was already withdrawn"
    else:
        text = (
            f"withdrew {key.kid} ({key.alg}): it is no longer published, and relying parties "
            "reject the tokens it signed"
        )
        if done.replacement is not None:
            text += f"; new key {done.replacement.kid} signs {key.alg} from now"
        elif successor is not None and successor.activates_at > now:
            text += f"; {successor.kid} signs {key.alg} from now, earlier than scheduled"
    data = {
        "kid": key.kid,
        "alg": key.alg,
        "already_withdrawn": done.already,
        "signing_kid": successor.kid if successor else None,
        "replacement_kid": done.replacement.kid if done.replacement else None,
    }
    _report(args, data, text)
    return EXIT_OK


def _build_app(config: Config, shared_counters: Path | None = None) -> Any:
    from broker.app import create_app
    from broker.keys import KeyStoreError
    from broker.storage import StorageError

    try:
        return create_app(config, shared_counters=shared_counters)
    except (KeyStoreError, StorageError) as err:
        raise UsageError(str(err)) from err


def dev_config(
    data_dir: Path, port: int, emulator_port: int, demo_port: int, app_key: str, demo_secret: str
) -> Config:
    """Embedded defaults for ``dev``: everything on 127.0.0.1, the emulator as QQ."""
    return parse_config(
        {
            "issuer": f"http://127.0.0.1:{port}",
            # One process: dev serves broker, emulator and demo from it (cmd_dev).
            "server": {"host": "127.0.0.1", "port": port, "workers": 1},
            "storage": {"url": "sqlite:///broker.sqlite3"},
            "keys": {"dir": "keys"},
            "upstream": {
                "qq": {
                    "app_id": "101000001",
                    "app_key": app_key,
                    "base_url": f"http://127.0.0.1:{emulator_port}",
                }
            },
            "rate_limits": {"enabled": False},
            "clients": [
                {
                    "client_id": "demo",
                    "client_secret": demo_secret,
                    "redirect_uris": [f"http://127.0.0.1:{demo_port}/callback"],
                    "post_logout_redirect_uris": [f"http://127.0.0.1:{demo_port}/logged-out"],
                }
            ],
        },
        source="<dev defaults>",
        base_dir=data_dir,
    )


def cmd_dev(args: argparse.Namespace) -> int:
    from broker.emulator import EmulatorSettings, create_emulator_app
    from broker.web.demo import create_demo_app

    data_dir = Path(args.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    app_key, demo_secret = secrets.token_hex(16), secrets.token_urlsafe(32)
    config = dev_config(
        data_dir, args.port, args.emulator_port, args.demo_port, app_key, demo_secret
    )
    qq = config.upstream.qq
    emulator = create_emulator_app(
        EmulatorSettings(
            app_id=qq.app_id,
            app_key=qq.app_key,
            callbacks=[f"{config.issuer}/qq/callback"],
            unionid_enabled=True,  # the dev app has UnionID permission: try subject: unionid
        )
    )
    demo_client = config.clients[0]
    demo = create_demo_app(
        config.issuer,
        "demo",
        demo_secret,
        demo_client.redirect_uris[0],
        post_logout_redirect_uri=demo_client.post_logout_redirect_uris[0],
    )
    # Bind every port before saying anything, so a taken port is one clear line.
    servers = [
        _bind(_build_app(config), args.port, "--port"),
        _bind(emulator, args.emulator_port, "--emulator-port"),
        _bind(demo, args.demo_port, "--demo-port"),
    ]
    for server in servers[1:]:
        threading.Thread(target=server.run, daemon=True).start()
    print(
        f"\nqq-oidc-broker dev: open http://127.0.0.1:{args.demo_port}/ and click Login with QQ.\n"
        f"(broker on port {args.port}, QQ emulator on port {args.emulator_port}, "
        f"data in {data_dir})\n",
        flush=True,
    )
    servers[0].run()
    return EXIT_OK


def _bind(app: Any, port: int, option: str) -> Any:
    from waitress.server import create_server

    try:
        return create_server(app, host="127.0.0.1", port=port, threads=8)
    except OSError as err:
        raise UsageError(
            f"{option} {port}: cannot listen on 127.0.0.1:{port} ({err.strerror})"
        ) from err


def cmd_emulator(args: argparse.Namespace) -> int:
    from waitress import serve

    from broker.emulator import EmulatorSettings, create_emulator_app, default_users, load_users

    app_id, app_key, callbacks = args.app_id, args.app_key, list(args.callback or [])
    if args.config or not (app_id and app_key):
        try:
            config = load_config(resolve_config_path(args.config))
        except ConfigError:
            if not (app_id and app_key):
                raise UsageError(
                    "emulator needs --app-id and --app-key, or a config (--config / BROKER_CONFIG)"
                ) from None
            config = None
        if config is not None:
            app_id = app_id or config.upstream.qq.app_id
            app_key = app_key or config.upstream.qq.app_key
            callbacks = callbacks or [f"{config.issuer}/qq/callback"]
    if not callbacks:
        raise UsageError("emulator needs at least one --callback URL (or a config to take it from)")
    try:
        users = load_users(Path(args.users)) if args.users else default_users()
    except (OSError, ValueError) as err:
        raise UsageError(f"--users: {err}") from err
    app = create_emulator_app(
        EmulatorSettings(
            app_id=app_id,
            app_key=app_key,
            callbacks=callbacks,
            users=users,
            unionid_enabled=args.unionid,
        )
    )
    print(
        f"QQ emulator on http://{args.host}:{args.port} "
        f"(app id {app_id}; callbacks: {', '.join(callbacks)})",
        flush=True,
    )
    serve(app, host=args.host, port=args.port, threads=args.threads)
    return EXIT_OK
