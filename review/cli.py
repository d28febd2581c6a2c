"""``namus-edge review``: ``serve``, ``user add NAME --role reviewer|admin`` (password on stdin), ``token create``."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from namus_edge.core.config import Config
from namus_edge.core.extras import require_extra
from namus_edge.core.secrets import read_mqtt_password

if TYPE_CHECKING:
    from types import ModuleType

#: What the console needs beyond the base install (the ``review`` extra).
REVIEW_MODULES = ("fastapi", "uvicorn", "jinja2", "sqlalchemy", "alembic", "argon2")


def _service_module() -> ModuleType:
    """``namus_edge.review.service``, after checking the ``review`` extra (one line naming it when missing).

    Imported when a review command runs, not when the CLI builds its parser: ``namus-edge --help``
    and the device commands work on a base install without the console's web stack.
    """
    for module in REVIEW_MODULES:
        require_extra(module, "review", "namus-edge review")
    from namus_edge.review import service

    return service


def register(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    """Add the ``review`` command group."""
    p = sub.add_parser("review", help="the reviewer console: web app, MQTT ingest, verdicts, accounts",
                       parents=[parent])
    rsub = p.add_subparsers(dest="review_command", metavar="ACTION")
    rsub.required = True
    sp = rsub.add_parser("serve", help="run the console (review.host:review.port)", parents=[parent])
    sp.set_defaults(func=_serve)
    up = rsub.add_parser("user", help="manage local accounts", parents=[parent])
    usub = up.add_subparsers(dest="user_command", metavar="ACTION")
    usub.required = True
    ua = usub.add_parser("add", help="add an account; the password is read from stdin", parents=[parent])
    ua.add_argument("name")
    ua.add_argument("--role", choices=["reviewer", "admin"], required=True)
    ua.set_defaults(func=_user_add)
    tp = rsub.add_parser("token", help="bearer tokens for scripts", parents=[parent])
    tsub = tp.add_subparsers(dest="token_command", metavar="ACTION")
    tsub.required = True
    tc = tsub.add_parser("create", help="create a bearer token for a user (printed once)", parents=[parent])
    tc.add_argument("--user", required=True)
    tc.set_defaults(func=_token_create)


def _serve(args: argparse.Namespace, config: Config) -> int:
    service = _service_module().ReviewService(config, read_mqtt_password(config.mqtt))
    service.start()
    service.serve()
    return 0


def _user_add(args: argparse.Namespace, config: Config) -> int:
    password = sys.stdin.readline().rstrip("\r\n")
    store = _service_module().open_store(config)
    try:
        user = store.add_user(args.name, args.role, password)
    finally:
        store.close()
    print(f"user {user.name} added ({user.role})")
    return 0


def _token_create(args: argparse.Namespace, config: Config) -> int:
    store = _service_module().open_store(config)
    try:
        print(store.create_token(args.user))
    finally:
        store.close()
    return 0
