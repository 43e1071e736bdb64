"""Admin API of the evacuation controller's records: ``GET /v2.1/os-evacuations``
and ``GET /v2.1/os-evacuations/<id>`` (Haven's own extension, admin only).

The records are written by the controller (``ha/evacuator``); this only reads
them, with each event's phase timings as seconds after the failure was detected.
It is the HA deployment's, not the cloud's: :func:`mount` is a compute API
extension (core.common.extensions), mounted by ``ha.extensions.HA_EXTENSIONS``.
"""

from __future__ import annotations

from typing import Any

import bottle
from sqlalchemy import select

from core.common import policy
from core.common.config import HavenConfig
from core.common.faults import BadRequest, NotFound
from core.common.paging import page_limit
from core.common.wsgi import auth, session
from ha.evacuator.cli import event_doc
from ha.evacuator.models import EvacuationEvent, EvacuationInstance, event_record, instance_record

RULES: dict[str, policy.Rule] = {"compute:evacuations": policy.admin}


def mount(app: bottle.Bottle, cfg: HavenConfig) -> None:
    """Add the records API (and its policy rule) to a compute API app."""
    policy.register(RULES)
    register(app, cfg.api.max_limit)


def register(app: bottle.Bottle, max_limit: int) -> None:
    @app.get("/v2.1/os-evacuations")
    def list_events() -> dict[str, Any]:
        policy.enforce(auth(), "compute:evacuations")
        query = bottle.request.query
        limit = page_limit(query, max_limit) if "limit" in query else min(100, max_limit)
        if limit < 1:
            raise BadRequest("Invalid input for query parameter 'limit': must be >= 1.")
        rows = session().scalars(select(EvacuationEvent).order_by(
            EvacuationEvent.id.desc()).limit(limit))
        return {"evacuations": [event_doc(event_record(r)) for r in rows]}

    @app.get("/v2.1/os-evacuations/<event_id>")
    def show_event(event_id: str) -> dict[str, Any]:
        policy.enforce(auth(), "compute:evacuations")
        row = session().get(EvacuationEvent, int(event_id)) if event_id.isdigit() else None
        if row is None:
            raise NotFound(f"Evacuation event {event_id} could not be found.")
        records = [instance_record(r) for r in session().scalars(
            select(EvacuationInstance).where(EvacuationInstance.event_id == row.id)
            .order_by(EvacuationInstance.priority.desc(), EvacuationInstance.instance_id))]
        return {"evacuation": event_doc(event_record(row), records)}
