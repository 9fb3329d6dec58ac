"""The SQLite engine's side of the store's upkeep (`maintenance.py`).

The engine itself is `checkpointers.sqlite` and the modules beside it; this
package holds what fills in `checkpointers.engines.base` for it.
"""
