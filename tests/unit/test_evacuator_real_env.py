"""The real evacuation environment's parsing of Pacemaker's output (no cluster needed:
captured XML)."""

from __future__ import annotations

import calendar
import subprocess
import time
from collections.abc import Sequence

from ha.crm import parse_crm_mon
from ha.evacuator.env import FenceResult, NodeState
from ha.evacuator.real import RealEnv, fence_time, node_states

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
  </fence_history>
</pacemaker-result>"""


def test_node_states_follow_crm_mon() -> None:
    assert node_states(parse_crm_mon(CRM_MON)) == {
        "node1": NodeState.ONLINE, "node2": NodeState.UNCLEAN, "node3": NodeState.OFFLINE}


def test_fence_times_round_up_within_their_second() -> None:
    base = calendar.timegm(time.strptime("2026-11-25 19:36:57", "%Y-%m-%d %H:%M:%S"))
    assert fence_time("2026-11-25 19:36:57Z") == base + 0.999
    assert fence_time("not a time") is None


def test_fence_events_of_one_node_oldest_first() -> None:
    def runner(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        assert argv[:3] == ["stonith_admin", "--history", "node2"]
        return subprocess.CompletedProcess(list(argv), 0, HISTORY, "")

    env = RealEnv(None, None, None, runner=runner)  # type: ignore[arg-type]
    events = env.fence_events("node2")
    assert [(e.result, e.action) for e in events] == [
        (FenceResult.FAILED, "off"), (FenceResult.SUCCESS, "off")]
    assert events[1].killed and not events[0].killed
