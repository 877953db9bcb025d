"""``jiriaf demo``: the main job on one machine (see :mod:`jiriaf.demo.orchestrate`)."""

from jiriaf.demo.orchestrate import run_demo

__all__ = ["run_demo"]
