"""Cluster bootstrap: corosync.conf and the CIB (as pcs commands) from a plan."""
