"""jiriaf: user-space Kubernetes nodes on HPC and batch resources."""

__version__ = "0.1.0"
