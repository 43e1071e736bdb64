"""The evacuation controller: restart the instances of a dead hypervisor elsewhere.

* :mod:`ha.evacuator.env` -- the environment interface (clock, cluster view,
  fence history, compute services and instances, the evacuate call, and the
  persisted records) that the controller is written against.
* :mod:`ha.evacuator.controller` -- the decisions, as a state machine driven by
  ``do_one_iteration()``; it never sleeps and never reads a clock of its own.
* :mod:`ha.evacuator.sim` -- a simulated cloud with virtual time, and
  :mod:`ha.evacuator.scenarios` -- the runner of the scenario folders in
  ``tests/scenarios/evacuation``.
* :mod:`ha.evacuator.models` -- the tables the real environment keeps the
  records in.
"""
