"""Several nodes, one cluster (issue 19): what nodes share, on well-kept engines.

Each node keeps its own spool (bodies + queue index: mail is durable where
it was accepted); what must look the same from every node is shared on
PostgreSQL (`db.py`: the node registry, suppressions, idempotency keys, the
ledger) and Redis (`limits.py`: quotas, rates, connection leases that
expire on their own). The runtime (`runtime/cluster.py`) wires these into
a daemon when `[cluster]` is set; nothing here runs otherwise.

Layer: imports `core` and `config` only (ARCHITECTURE §2).
"""
