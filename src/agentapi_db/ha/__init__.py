"""High availability and point-in-time recovery on the field's engines.

* :mod:`agentapi_db.ha.engine`: a local primary + synchronous standby under
  pg_auto_failover (``agentapi-db ha up|status|down|switchover``);
* :mod:`agentapi_db.ha.pitr`: WAL archiving, backups and point-in-time restores
  with pgBackRest (``agentapi-db pitr backup|list|restore``).

docs/ha.md explains the choices and the measured failover time.
"""

from agentapi_db.ha.engine import HaCluster, HaStatus, NodeInfo

__all__ = ["HaCluster", "HaStatus", "NodeInfo"]
