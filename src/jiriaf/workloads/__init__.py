"""jiriaf.workloads."""
