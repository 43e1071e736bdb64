"""What runs on each hypervisor for guest networking (security groups first)."""
