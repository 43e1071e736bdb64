"""A port's ``security_groups`` and ``port_security_enabled`` (Neutron's two extensions).

As Neutron (``neutron/db/securitygroups_db.py``, ``portsecurity_db_common.py``):

* a new port with port security (the default) and an address gets its project's
  ``default`` group unless it names its groups; ports of the cloud's own devices
  (``network:*`` owners: routers, DHCP) get none;
* groups named on create or update must be groups of the port's project (else 404,
  as Neutron, which looks them up in that project);
* groups need port security and an address: asking for both groups and no port
  security is a 400; turning port security off while the port keeps groups is a
  409;
* only the network's owner or an administrator changes ``port_security_enabled``
  (on the shared provider network a tenant could otherwise spoof addresses).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.common import policy
from core.common.auth import AuthContext
from core.common.faults import BadRequest, Conflict, NotFound
from core.common.wsgi import field
from core.network.models import Port
from core.network.policies import privileged_device_owner
from core.network.secgroup_models import PortSecurity, PortSecurityGroup, SecurityGroup
from core.network.security_groups import ensure_default

NEEDS_SECURITY = ("Port security must be enabled and port must have an IP address in "
                  "order to use security groups.")


def attributes(sess: Session, port_id: str) -> dict[str, Any]:
    """The port's two attributes as Neutron shows them."""
    enabled = sess.scalar(select(PortSecurity.port_security_enabled).where(
        PortSecurity.port_id == port_id))
    groups = sorted(sess.scalars(select(PortSecurityGroup.security_group_id).where(
        PortSecurityGroup.port_id == port_id)))
    return {"security_groups": groups,
            "port_security_enabled": True if enabled is None else bool(enabled)}


def _groups(body: dict[str, Any]) -> list[str] | None:
    if "security_groups" not in body or body["security_groups"] is None:
        return None
    value = body["security_groups"]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest("Invalid input for field 'security_groups': a list of security "
                         "group ids.")
    return list(dict.fromkeys(value))


def _check_groups(sess: Session, project_id: str | None, ids: list[str]) -> None:
    for group_id in ids:
        g = sess.get(SecurityGroup, group_id)
        if g is None or g.project_id != project_id:
            raise NotFound(f"Security group {group_id} does not exist")


def _bind(sess: Session, port_id: str, ids: list[str]) -> None:
    sess.execute(delete(PortSecurityGroup).where(PortSecurityGroup.port_id == port_id))
    for group_id in ids:
        sess.add(PortSecurityGroup(port_id=port_id, security_group_id=group_id))
    try:
        sess.flush()
    except IntegrityError:  # a group deleted between the check and now
        raise NotFound(f"Security group in {ids} does not exist") from None


def _set_enabled(sess: Session, port_id: str, enabled: bool) -> None:
    sess.merge(PortSecurity(port_id=port_id, port_security_enabled=enabled))


def on_create(sess: Session, ctx: AuthContext, body: dict[str, Any], port: Port,
              target: dict[str, Any], has_ip: bool) -> None:
    """Give the new (flushed) ``port`` its port security and groups from ``body``."""
    enabled = field(body, "port_security_enabled", bool, True)
    if "port_security_enabled" in body:
        policy.enforce(ctx, "network:create_port:port_security_enabled", target)
    wanted = _groups(body)
    _set_enabled(sess, port.id, enabled)
    if wanted is None:
        if not enabled or not has_ip or privileged_device_owner(port.device_owner) \
                or port.project_id is None:
            return
        wanted = [ensure_default(sess, port.project_id)]
    elif wanted and (not enabled or not has_ip):
        raise BadRequest(NEEDS_SECURITY)
    _check_groups(sess, port.project_id, wanted)
    _bind(sess, port.id, wanted)


def on_update(sess: Session, ctx: AuthContext, body: dict[str, Any], port: Port,
              target: dict[str, Any], has_ip: bool) -> None:
    """Apply ``body``'s ``security_groups``/``port_security_enabled`` to ``port``."""
    current = attributes(sess, port.id)
    enabled = current["port_security_enabled"]
    if "port_security_enabled" in body:
        policy.enforce(ctx, "network:update_port:port_security_enabled", target)
        enabled = field(body, "port_security_enabled", bool)
    wanted = _groups(body)
    groups = current["security_groups"] if wanted is None else wanted
    if groups and not enabled:
        if "port_security_enabled" in body and wanted is None:
            raise Conflict("Port has security group associated. Cannot disable port security "
                           "or ip address until security group is removed")
        raise BadRequest(NEEDS_SECURITY)
    if wanted and not has_ip:
        raise BadRequest(NEEDS_SECURITY)
    if wanted is not None:
        _check_groups(sess, port.project_id, wanted)
        _bind(sess, port.id, wanted)
    if "port_security_enabled" in body:
        _set_enabled(sess, port.id, enabled)


KEYS = ("security_groups", "port_security_enabled")
