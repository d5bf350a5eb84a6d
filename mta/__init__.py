"""mta — a self-hosted mail transfer agent in Python asyncio.

Layers (a strict DAG, lower never imports higher; see DESIGN.md §2):
core → config → policy → scheduler; core → mail; core → spool;
delivery (core, policy, mail); server (core, policy, mail, spool);
admin; runtime (everything); cli (runtime).
"""

__version__ = "0.1.0"
