"""Runnable demo and benchmark workloads, used as pod commands on JRM nodes.

Each module is a program (``python3 -m jiriaf.workloads.<name> --help``):

* :mod:`jiriaf.workloads.httpserver` - an HTTP server that burns CPU per request (the HPA target);
* :mod:`jiriaf.workloads.loadbalancer` - an HTTP load balancer that follows a Service's EndpointSlices;
* :mod:`jiriaf.workloads.loadgen` - a bounded load generator in the spirit of ``hey``;
* :mod:`jiriaf.workloads.stream.sender` / :mod:`jiriaf.workloads.stream.receiver` - the streaming
  workload of the digital twin (events over TCP into a FIFO served by N worker threads).
"""
