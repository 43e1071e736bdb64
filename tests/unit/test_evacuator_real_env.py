"""The real evacuation environment's parsing of Pacemaker's output (no cluster needed:
captured XML)."""

from __future__ import annotations

import calendar
import subprocess
from collections.abc import Sequence

from ha.crm import parse_crm_mon
from ha.evacuator.env import FenceResult, NodeState
from ha.evacuator.real import RealEnv, node_states

CRM_MON = """<pacemaker-result api-version="2.25" request="crm_mon --output-as=xml">
  <summary><current_dc present="true" name="node1" with_quorum="true"/></summary>
  <nodes>
    <node name="node1" online="true" standby="false" unclean="false"/>
    <node name="node2" online="false" standby="false" unclean="true"/>
    <node name="node3" online="false" standby="false" unclean="false"/>
  </nodes>
</pacemaker-result>"""

HISTORY = """<pacemaker-result api-version="2.25" request="stonith_admin --history node2">
  <fence_history>
    <fence_event status="failed" action="off" target="node2" client="c" origin="node1"
                 delegate="node3" completed="2026-11-25 19:36:50Z"/>
    <fence_event status="success" action="off" target="node2" client="c" origin="node1"
                 delegate="node1" completed="2026-11-25 19:36:57Z"/>
    <fence_event status="success" action="off" target="node3" client="c" origin="node1"
                 delegate="node1" completed="2026-11-25 19:30:00Z"/>
    <fence_event status="success" action="reboot" target="node2" client="c" origin="node1"
                 delegate="node1" completed="&lt;undefined time&gt;"/>
    <fence_event status="success" action="reboot" target="node2" client="c" origin="node1"
                 delegate="node3" completed="2026-11-26 01:06:53 +05:30"/>
    <fence_event status="pending" action="off" target="node2" client="c" origin="node1"/>
  </fence_history>
</pacemaker-result>"""


def test_node_states_follow_crm_mon() -> None:
    assert node_states(parse_crm_mon(CRM_MON)) == {
        "node1": NodeState.ONLINE, "node2": NodeState.UNCLEAN, "node3": NodeState.OFFLINE}


def test_fence_events_of_one_node_oldest_first() -> None:
    def runner(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        assert argv[:3] == ["stonith_admin", "--history", "node2"]
        return subprocess.CompletedProcess(list(argv), 0, HISTORY, "")

    env = RealEnv(None, None, None, runner=runner)  # type: ignore[arg-type]
    events = env.fence_events("node2")
    assert [(e.result, e.action) for e in events] == [
        (FenceResult.FAILED, "off"), (FenceResult.SUCCESS, "reboot"),
        (FenceResult.SUCCESS, "off"), (FenceResult.SUCCESS, "reboot"),
        (FenceResult.PENDING, "off")]
    stamp = calendar.timegm((2026, 11, 25, 19, 36, 50, 0, 0, 0))
    # the +05:30 time read as 19:36:53Z; the unreadable one and the pending one: no time
    assert [e.at for e in events] == [stamp + 0.999, stamp + 3.999, stamp + 7.999, None, None]
    assert events[2].killed and not events[0].killed


class StandInComputeApi:
    """Stands in for the compute API's batch evacuate (the real one is exercised in
    tests/integration/test_scheduling_race.py and every evacuation lab): records the
    requests, answers per server from a table."""

    def __init__(self, answers: dict[str, dict[str, object]], status: int = 200) -> None:
        self.answers = answers
        self.status = status
        self.requests: list[tuple[str, list[str]]] = []

    def request(self, method: str, service: str, path: str, **kwargs: object) -> object:
        from core.common.clients import ServiceCallError

        body = kwargs["json"]
        assert method == "POST" and service == "compute" and isinstance(body, dict)
        ids = body["evacuate"]["servers"]
        self.requests.append((path, ids))
        if self.status != 200:
            raise ServiceCallError(f"{path}: {self.status}", self.status)
        items = [{"server_id": i, **self.answers[i]} for i in ids]

        class Response:
            def json(self) -> object:
                return {"evacuations": items}
        return Response()


def test_evacuate_many_sends_one_request_per_source_and_maps_each_answer() -> None:
    from core.common.config import HavenConfig
    from ha.evacuator.env import Conflict, NoValidHost, TransientError

    api = StandInComputeApi({
        "a": {"host": "n2"},
        "b": {"error": {"code": 409, "type": "no_valid_host", "message": "No room"}},
        "c": {"error": {"code": 404, "message": "gone"}}, "d": {"host": "n3"},
        "e": {"error": {"code": 503, "message": "database unavailable"}}})
    env = RealEnv(HavenConfig(), None, api)  # type: ignore[arg-type]
    got = env.evacuate_many([("a", "n1"), ("b", "n1"), ("d", "n4"), ("c", "n1"), ("e", "n4")])
    assert sorted(api.requests) == [("/os-hosts/n1/evacuate", ["a", "b", "c"]),
                                    ("/os-hosts/n4/evacuate", ["d", "e"])]
    assert got[0] == "n2" and got[2] == "n3"
    assert isinstance(got[1], NoValidHost)  # not retried: the fleet is full
    assert isinstance(got[3], Conflict)  # looked at again: it moved or went away
    assert isinstance(got[4], TransientError)  # retried with backoff

    failing = StandInComputeApi({}, status=502)
    env = RealEnv(HavenConfig(), None, failing)  # type: ignore[arg-type]
    assert all(isinstance(r, TransientError) for r in env.evacuate_many([("a", "n1"),
                                                                         ("b", "n1")]))
    assert env.evacuate_many([]) == []
