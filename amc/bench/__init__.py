"""Every benchmark of ``amc-bench``, one per module (``bench=<name>`` runs ``amc.bench.<name>``): policy cost and
baselines (pruning), the latency table (latency), the proxy's fidelity (fidelity) and speed (speed), RL against
the baselines (compare), episodes/hour with workers (parallel), memory over a search (memory); what they share is
in :mod:`amc.bench.common`."""
