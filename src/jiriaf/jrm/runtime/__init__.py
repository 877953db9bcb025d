"""jiriaf.jrm.runtime."""
