"""The streaming workload of the digital twin: a sender, a FIFO over TCP, a multi-threaded receiver.

* :mod:`.sender` emits events at a rate (constant, Poisson, a schedule, or changed at runtime);
* :mod:`.receiver` queues them in a FIFO served by N worker threads with a per-event cost;
* :mod:`.protocol` is the wire format, :mod:`.arrivals` the arrival process, :mod:`.service` the
  worker pool and its cost model, :mod:`.rates` the sliding-window rate meters.
"""
