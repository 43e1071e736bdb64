"""Server metadata routes (``/servers/<id>/metadata``), Nova's rules on keys and counts
(:mod:`core.compute.metadata_rules`)."""

from __future__ import annotations

from typing import Any

import bottle
from sqlalchemy import delete

from core.common.faults import BadRequest, NotFound
from core.common.wsgi import auth, field, json_body, session
from core.compute.api import ComputeContext
from core.compute.instances import load_server, metadata_of
from core.compute.metadata_rules import check_admin_keys, check_count, check_metadata
from core.compute.models import InstanceMetadata


def register(app: bottle.Bottle, ctx: ComputeContext) -> None:
    @app.get("/v2.1/servers/<instance_id>/metadata")
    def get_metadata(instance_id: str) -> dict[str, Any]:
        return {"metadata": metadata_of(session(), load_server(instance_id).id)}

    def replace_metadata(instance_id: str, merge: bool) -> dict[str, Any]:
        inst = load_server(instance_id, write=True)
        meta = check_metadata(field(json_body(), "metadata", dict))
        sess = session()
        before = metadata_of(sess, inst.id)
        check_admin_keys(auth(), before, {**before, **meta} if merge else meta)
        if not merge:
            sess.execute(delete(InstanceMetadata).where(InstanceMetadata.instance_id == inst.id))
            sess.flush()
        for key, value in meta.items():
            sess.merge(InstanceMetadata(instance_id=inst.id, key=key, value=value))
        sess.flush()
        current = metadata_of(sess, inst.id)
        check_count(len(current))
        return {"metadata": current}

    app.route("/v2.1/servers/<instance_id>/metadata", "POST",
              lambda instance_id: replace_metadata(instance_id, merge=True))
    app.route("/v2.1/servers/<instance_id>/metadata", "PUT",
              lambda instance_id: replace_metadata(instance_id, merge=False))

    @app.get("/v2.1/servers/<instance_id>/metadata/<key>")
    def get_meta_item(instance_id: str, key: str) -> dict[str, Any]:
        meta = metadata_of(session(), load_server(instance_id).id)
        if key not in meta:
            raise NotFound(f"Metadata item {key} was not found.")
        return {"meta": {key: meta[key]}}

    @app.put("/v2.1/servers/<instance_id>/metadata/<key>")
    def set_meta_item(instance_id: str, key: str) -> dict[str, Any]:
        inst = load_server(instance_id, write=True)
        item = check_metadata(field(json_body(), "meta", dict), "meta")
        if list(item) != [key]:
            raise BadRequest("Request body and URI mismatch: 'meta' must hold exactly the "
                             "key in the URL.")
        before = metadata_of(session(), inst.id)
        check_admin_keys(auth(), before, {**before, **item})
        session().merge(InstanceMetadata(instance_id=inst.id, key=key, value=item[key]))
        session().flush()
        check_count(len(metadata_of(session(), inst.id)))
        return {"meta": item}

    @app.delete("/v2.1/servers/<instance_id>/metadata/<key>")
    def delete_meta_item(instance_id: str, key: str) -> None:
        inst = load_server(instance_id, write=True)
        row = session().get(InstanceMetadata, (inst.id, key))
        if row is None:
            raise NotFound(f"Metadata item {key} was not found.")
        check_admin_keys(auth(), {key: row.value}, {})
        session().delete(row)
