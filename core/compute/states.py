"""Instance states, as Nova has them, and the status the API shows.

``vm_state`` is where the instance is; ``task_state`` is what is being done to
it right now (None when idle). Every change is a compare-and-swap on both, so
two actors (two API processes, an agent and the evacuator) can never both
believe they own the next step.

| vm_state  | task_state                           | API status     |
|-----------|--------------------------------------|----------------|
| building  | scheduling / networking / spawning   | BUILD          |
| active    | None                                 | ACTIVE         |
| active    | rebooting / rebooting_hard           | REBOOT / HARD_REBOOT |
| active    | powering-off                         | ACTIVE         |
| stopped   | None / powering-on                   | SHUTOFF        |
| any       | rebuilding (evacuation)              | REBUILD        |
| any       | deleting                             | as the vm_state |
| error     | any                                  | ERROR          |
| deleted   | None                                 | DELETED        |
"""

from __future__ import annotations

BUILDING, ACTIVE, STOPPED, ERROR, DELETED = "building", "active", "stopped", "error", "deleted"
VM_STATES = (BUILDING, ACTIVE, STOPPED, ERROR, DELETED)

SCHEDULING, NETWORKING, SPAWNING = "scheduling", "networking", "spawning"
POWERING_OFF, POWERING_ON = "powering-off", "powering-on"
REBOOTING, REBOOTING_HARD = "rebooting", "rebooting_hard"
REBUILDING, DELETING = "rebuilding", "deleting"
TASK_STATES = (SCHEDULING, NETWORKING, SPAWNING, POWERING_OFF, POWERING_ON, REBOOTING,
               REBOOTING_HARD, REBUILDING, DELETING, None)

# libvirt-independent power states (Nova's numbers)
NOSTATE, RUNNING, PAUSED, SHUTDOWN, CRASHED, SUSPENDED = 0, 1, 3, 4, 6, 7


def api_status(vm_state: str, task_state: str | None) -> str:
    if vm_state == ERROR:
        return "ERROR"
    if vm_state == DELETED:
        return "DELETED"
    if task_state == REBUILDING:
        return "REBUILD"
    if vm_state == BUILDING:
        return "BUILD"
    if vm_state == STOPPED:
        return "SHUTOFF"
    if task_state == REBOOTING:
        return "REBOOT"
    if task_state == REBOOTING_HARD:
        return "HARD_REBOOT"
    if vm_state == ACTIVE:
        return "ACTIVE"
    raise ValueError(f"unknown vm_state {vm_state!r}")
