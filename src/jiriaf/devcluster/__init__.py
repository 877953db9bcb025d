"""jiriaf.devcluster."""
