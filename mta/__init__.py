"""mta — a self-hosted mail transfer agent in Python asyncio.

The map — data flow, the layer table (a strict DAG: lower never imports
higher), the process model, the contracts, the state machines and the stores
— is docs/ARCHITECTURE.md; tests/test_architecture.py holds the code to it.
"""

__version__ = "0.1.0"
