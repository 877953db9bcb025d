"""jiriaf.twin: a digital twin of the streaming queue (paper section 6).

Modules: ``queueing`` (M/M/1, M/M/c), ``simulator`` (discrete-event sender/FIFO/receiver),
``model`` (the DBN's tables), ``dbn`` (filtering, smoothing, prediction, EM with numpy),
``reference`` (the original twin and the paper scenario), ``policy`` (threshold rule, value
iteration), ``digital_twin`` (the online twin), ``scenario`` (closed-loop runs, lag analysis),
``fitting`` (recorded data and fits), ``paper_tables`` (Tables 8/9 check), ``plots``,
``reproduction`` (``jiriaf twin reproduce``), ``live`` (sources and actuators), ``commands`` (CLI).
"""
