"""A router's data plane: its network namespace, addresses and NAT (see plan.py)."""
