"""Per-table operations, each one generator function (see :mod:`agentapi_db.ops._core`).

``from agentapi_db.ops import sessions`` gives the operations as functions of an
:class:`~agentapi_db.ops._core.OpContext`; run one with ``tx.run(op)``. Usually you
call them as methods instead: ``tx.sessions.create(...)``.
"""

from agentapi_db.ops._core import UNSET, Op, OpContext, Query, Unset

__all__ = ["UNSET", "Op", "OpContext", "Query", "Unset"]
