"""Server actions (``POST /servers/<id>/action``) and Haven's batch evacuate of a host
(``POST /os-hosts/<host>/evacuate``).

Each action is a compare-and-swap of the instance's states (the agent does the
work when nudged); evacuation's rules and claims are :mod:`core.compute.evacuate`'s.
"""

from __future__ import annotations

from typing import Any

import bottle

from core.common import policy
from core.common.bus import BusError
from core.common.faults import BadRequest, Conflict, Fault
from core.common.wsgi import auth, commit, field, json_body, session
from core.compute import messages, server_secgroups, states
from core.compute.api import ComputeContext
from core.compute.evacuate import evacuate_instance, evacuate_servers
from core.compute.instances import load_server, nudge, transition

MAX_EVACUATE_BATCH = 1000  # servers in one POST /v2.1/os-hosts/<host>/evacuate


def register(app: bottle.Bottle, ctx: ComputeContext) -> None:
    @app.post("/v2.1/servers/<instance_id>/action")
    def server_action(instance_id: str) -> Any:
        body = json_body()
        if len(body) != 1:
            raise BadRequest("An action body holds exactly one action.")
        action, args = next(iter(body.items()))
        handler = ACTIONS.get(action)
        if handler is None:
            raise BadRequest(f"There is no such action: {action}")
        return handler(instance_id, args if args is not None else {})

    def stop(instance_id: str, _args: Any) -> None:
        inst = load_server(instance_id, write=True)
        transition(session(), inst, (states.ACTIVE,), (None,), task_state=states.POWERING_OFF)
        commit()
        nudge(ctx, inst)
        bottle.response.status = 202

    def start(instance_id: str, _args: Any) -> None:
        inst = load_server(instance_id, write=True)
        transition(session(), inst, (states.STOPPED,), (None,), task_state=states.POWERING_ON)
        commit()
        nudge(ctx, inst)
        bottle.response.status = 202

    def reboot(instance_id: str, args: Any) -> None:
        if not isinstance(args, dict):
            raise BadRequest("Invalid input for field 'reboot': expected an object.")
        kind = field(args, "type", str)
        if kind.upper() not in ("SOFT", "HARD"):
            raise BadRequest("Invalid input for field 'reboot.type': SOFT or HARD.")
        inst = load_server(instance_id, write=True)
        task = states.REBOOTING if kind.upper() == "SOFT" else states.REBOOTING_HARD
        allowed_vm = (states.ACTIVE,) if task == states.REBOOTING else (states.ACTIVE,
                                                                         states.STOPPED,
                                                                         states.ERROR)
        transition(session(), inst, allowed_vm, (None, states.REBOOTING), task_state=task)
        commit()
        nudge(ctx, inst)
        bottle.response.status = 202

    def console_output(instance_id: str, args: Any) -> dict[str, Any]:
        inst = load_server(instance_id)
        length = field(args, "length", (int, str), None) if isinstance(args, dict) else None
        try:
            lines = int(length) if length is not None else None
        except ValueError:
            raise BadRequest("Invalid input for field 'length': an integer.") from None
        if inst.host is None or inst.vm_state == states.BUILDING:
            raise Conflict(f"Instance {instance_id} is not ready: no console yet.")
        try:
            reply = messages.console_log(ctx.bus, inst.host, inst.id, lines)
        except BusError as exc:
            raise Fault(f"Console of instance {instance_id} unavailable: {exc}", 503) from None
        return {"output": reply.output}

    def evacuate(instance_id: str, args: Any) -> dict[str, Any]:
        policy.enforce(auth(), "compute:evacuate")
        if not isinstance(args, dict):
            raise BadRequest("Invalid input for field 'evacuate': expected an object.")
        target = field(args, "host", str, None)
        inst = load_server(instance_id, write=True)
        evacuate_instance(ctx, session(), inst, target)
        commit()
        nudge(ctx, inst)
        bottle.response.status = 200
        return {"adminPass": ""}

    @app.post("/v2.1/os-hosts/<host>/evacuate")
    def evacuate_host_servers(host: str) -> dict[str, Any]:
        """Haven's extension: evacuate many servers of one dead host at once."""
        policy.enforce(auth(), "compute:evacuate")
        spec = field(json_body(), "evacuate", dict)
        ids = field(spec, "servers", list)
        if not ids or len(ids) > MAX_EVACUATE_BATCH or not all(
                isinstance(i, str) and i for i in ids) or len(set(ids)) != len(ids):
            raise BadRequest("Invalid input for field 'evacuate.servers': 1 to "
                             f"{MAX_EVACUATE_BATCH} distinct server IDs.")
        results, moved = evacuate_servers(ctx, session(), host, ids,
                                          lambda i: load_server(i, write=True))
        commit()
        for inst in moved:
            nudge(ctx, inst)
        return {"evacuations": results}

    def create_image(_instance_id: str, _args: Any) -> None:
        raise BadRequest("createImage is not supported yet by Haven.")

    ACTIONS = {
        "os-stop": stop, "os-start": start, "reboot": reboot,
        "os-getConsoleOutput": console_output, "evacuate": evacuate,
        "createImage": create_image, **server_secgroups.actions(ctx.clients),
    }
