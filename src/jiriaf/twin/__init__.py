"""jiriaf.twin."""
