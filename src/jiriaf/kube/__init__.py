"""jiriaf.kube."""
