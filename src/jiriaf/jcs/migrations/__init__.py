"""Alembic migrations of the central service's database (applied by ``Database.upgrade``)."""
