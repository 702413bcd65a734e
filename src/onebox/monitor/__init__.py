"""Monitoring at four levels: component (CPU cores, memory, disks, network, GPUs), node
(aggregates, heartbeat, versions, health), cluster (every node) and task (jobs, deployments and
their processes).

Collectors return :class:`~onebox.monitor.samples.Sample` lists; :mod:`.tsdb` keeps them as
time series in the metadata store (raw, then rolled up); :mod:`.exposition` renders the latest
snapshot for Prometheus; :mod:`.loop` runs it all at an interval inside ``onebox serve``.
"""
