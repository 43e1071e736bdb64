"""Nova's ``os-keypairs``: a user's SSH public keys, imported or generated, by name.

* Import (``public_key`` given): the key is checked (:mod:`core.compute.sshkeys`)
  and stored with Nova's fingerprint. Generate (no ``public_key``): Haven makes
  a key pair and answers the private key once; it is never stored or logged.
* Keys belong to a user, not a project. A user manages their own; an
  administrator may act for another user with ``user_id`` (microversion 2.10: in
  the create body, or the query of list, show and delete).
* Only ``ssh`` keys: ``type`` (microversion 2.2) ``x509`` or anything else is a
  400 naming ``keypair.type``. Names as Nova before 2.92: 1 to 255 characters of
  letters, digits, ``_``, ``-`` and space, not starting or ending with a space;
  a name the user already has is a 409.
* Quota ``key_pairs`` (the caller's project's limit, counted per user):
  :func:`core.compute.quotas.enforce_key_pairs`.

Microversions change the shapes as in Nova: ``type`` appears from 2.2, create
answers 201 (200 before) and delete 204 (202 before).

:func:`key_for_server` is what a server create asks: the caller's key by name,
or Nova's 400 ``Invalid key_name provided.``
"""

from __future__ import annotations

import string
from typing import Any

import bottle
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.common import policy
from core.common.faults import BadRequest, Conflict, NotFound
from core.common.policy import Rule, admin, any_of, owner
from core.common.quota import Quotas
from core.common.timeutil import iso_us, now
from core.common.wsgi import auth, field, json_body, session
from core.compute import sshkeys
from core.compute.api import microversion
from core.compute.keypair_models import KEYPAIR_TYPE_SSH, KeyPair
from core.compute.quotas import enforce_key_pairs

RULES: dict[str, Rule] = {
    "compute:keypairs:index": any_of(admin, owner),
    "compute:keypairs:create": any_of(admin, owner),
    "compute:keypairs:show": any_of(admin, owner),
    "compute:keypairs:delete": any_of(admin, owner),
}
TYPE_VERSION = (2, 2)  # "type" in requests and answers; 201/204 statuses
USER_VERSION = (2, 10)  # an administrator's "user_id" (body of create, query of the rest)
NAME_CHARS = frozenset("_- " + string.digits + string.ascii_letters)
INVALID = "Keypair data is invalid: "


def check_name(name: str) -> str:
    """Nova's rules for a key pair's name (before 2.92), as 400s naming the field."""
    if not 1 <= len(name) <= 255:
        raise BadRequest(f"Invalid input for field 'keypair.name': {INVALID}Keypair name "
                         "must be string and between 1 and 255 characters long")
    if name != name.strip():
        raise BadRequest("Invalid input for field 'keypair.name': leading or trailing "
                         "whitespace is not allowed.")
    if not set(name) <= NAME_CHARS:
        raise BadRequest(f"Invalid input for field 'keypair.name': {INVALID}Keypair name "
                         "contains unsafe characters")
    return name


def find(sess: Session, user_id: str, name: str) -> KeyPair | None:
    """The user's key of exactly this name (a case-insensitive collation may return a
    near miss: it is not the key asked for)."""
    row = sess.scalar(select(KeyPair).where(KeyPair.user_id == user_id,
                                            KeyPair.name == name))
    return row if row is not None and row.name == name else None


def key_for_server(sess: Session, user_id: str, key_name: str) -> KeyPair:
    """The key a server create names: the caller's own, or Nova's 400."""
    row = find(sess, user_id, key_name)
    if row is None:
        raise BadRequest("Invalid key_name provided.")
    return row


def _query_user() -> str:
    """The user whose keys a list, show or delete is about (``user_id`` from 2.10)."""
    asked = bottle.request.query.getall("user_id")
    if not asked:
        return str(auth().user_id)
    if microversion() < USER_VERSION:
        raise BadRequest("Invalid input for query parameter 'user_id': it needs "
                         "microversion 2.10 or later.")
    return str(asked[0])


def _not_found(name: str, user_id: str) -> NotFound:
    return NotFound(f"Keypair {name} not found for user {user_id}")


def _view(row: KeyPair, full: bool = False) -> dict[str, Any]:
    view: dict[str, Any] = {"name": row.name, "public_key": row.public_key,
                            "fingerprint": row.fingerprint}
    if full:
        view.update({"user_id": row.user_id, "deleted": False, "id": row.id,
                     "created_at": iso_us(row.created_at), "updated_at": None,
                     "deleted_at": None})
    if microversion() >= TYPE_VERSION:
        view["type"] = row.type
    return view


def _create_fields(spec: dict[str, Any]) -> None:
    """400 for any key of ``keypair`` this microversion does not have (none is dropped)."""
    allowed = {"name", "public_key"}
    if microversion() >= TYPE_VERSION:
        allowed.add("type")
    if microversion() >= USER_VERSION:
        allowed.add("user_id")
    for key in spec:
        if key not in allowed:
            needs = {"type": " (it needs microversion 2.2 or later)",
                     "user_id": " (it needs microversion 2.10 or later)"}.get(key, "")
            raise BadRequest(f"Invalid input for field 'keypair.{key}': not accepted{needs}.")


def register(app: bottle.Bottle, quotas: Quotas) -> None:
    policy.register(RULES)

    @app.get("/v2.1/os-keypairs")
    def list_keypairs() -> dict[str, Any]:
        user_id = _query_user()
        policy.enforce(auth(), "compute:keypairs:index", {"user_id": user_id})
        rows = session().scalars(select(KeyPair).where(KeyPair.user_id == user_id)
                                 .order_by(KeyPair.name, KeyPair.id))
        return {"keypairs": [{"keypair": _view(r)} for r in rows]}

    @app.post("/v2.1/os-keypairs")
    def create_keypair() -> dict[str, Any]:
        ctx = auth()
        body = json_body()
        for key in body:
            if key != "keypair":
                raise BadRequest(f"Invalid input for field '{key}': not accepted.")
        spec = field(body, "keypair", dict)
        _create_fields(spec)
        name = check_name(field(body, "keypair.name", str))
        key_type = field(body, "keypair.type", str, KEYPAIR_TYPE_SSH)
        if key_type != KEYPAIR_TYPE_SSH:
            raise BadRequest(f"Invalid input for field 'keypair.type': Haven keeps "
                             f"'{KEYPAIR_TYPE_SSH}' key pairs only ({key_type[:20]!r} is "
                             "not supported).")
        user_id = field(body, "keypair.user_id", str, None)
        if user_id is None:
            user_id = str(ctx.user_id)
        elif not user_id:
            raise BadRequest("Invalid input for field 'keypair.user_id': empty.")
        policy.enforce(ctx, "compute:keypairs:create",
                       {"user_id": user_id, "project_id": ctx.project_id})
        private_pem = None
        if "public_key" in spec:
            text = field(body, "keypair.public_key", str)
            try:
                public = sshkeys.parse_public_key(text)
            except sshkeys.InvalidPublicKey as exc:
                raise BadRequest(f"Invalid input for field 'keypair.public_key': "
                                 f"{INVALID}{exc}") from None
        else:
            generated = sshkeys.generate()
            public, private_pem = generated.public, generated.private_pem
        sess = session()
        if find(sess, user_id, name) is not None:
            raise Conflict(f"Key pair '{name}' already exists.")
        enforce_key_pairs(quotas, sess, ctx.project_id, user_id)
        row = KeyPair(user_id=user_id, name=name, fingerprint=public.fingerprint,
                      public_key=public.text, type=key_type, created_at=now())
        sess.add(row)
        try:
            sess.flush()
        except IntegrityError:
            raise Conflict(f"Key pair '{name}' already exists.") from None
        view = _view(row)
        view["user_id"] = user_id
        if private_pem is not None:
            view["private_key"] = private_pem
        bottle.response.status = 201 if microversion() >= TYPE_VERSION else 200
        return {"keypair": view}

    @app.get("/v2.1/os-keypairs/<name>")
    def show_keypair(name: str) -> dict[str, Any]:
        user_id = _query_user()
        policy.enforce(auth(), "compute:keypairs:show", {"user_id": user_id})
        row = find(session(), user_id, name)
        if row is None:
            raise _not_found(name, user_id)
        return {"keypair": _view(row, full=True)}

    @app.delete("/v2.1/os-keypairs/<name>")
    def delete_keypair(name: str) -> None:
        user_id = _query_user()
        policy.enforce(auth(), "compute:keypairs:delete", {"user_id": user_id})
        row = find(session(), user_id, name)
        if row is None:
            raise _not_found(name, user_id)
        session().delete(row)
        bottle.response.status = 204 if microversion() >= TYPE_VERSION else 202
