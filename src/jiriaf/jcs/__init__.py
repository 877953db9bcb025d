"""jiriaf.jcs."""
