"""Pilots: batch jobs that start JRMs on the nodes they are given (SLURM and others through PSI/J)."""
