"""Where worker replicas run beyond local processes: ``cluster.backend: ray`` (``cluster/ray.py``).

The local backend (one child process per replica) stays in ``launcher.py``; a cluster backend
offers the same operations: start the replicas of the config, start or stop one replica, scale
a model to N replicas, stop all, and report where each replica runs.
"""

from __future__ import annotations

__all__: list[str] = []
