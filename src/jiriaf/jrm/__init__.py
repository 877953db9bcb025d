"""jiriaf.jrm."""
