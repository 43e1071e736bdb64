"""The namespace lab: real Corosync/Pacemaker clusters of several nodes on one machine.

A node is a network namespace wired into a lab-only bridge plus its own mount, UTS,
IPC and PID namespaces, whose init is killed from the host side by a "power switch"
daemon, so Pacemaker fences for real. See docs/architecture.md, "The lab".

This package imports nothing heavy at import time: ``ha/lab/init.py`` (each node's
PID 1) and the fence agent must start fast and small.
"""
