"""Serve: the serving layer the dashboard reads.

`store` defines the metric tables and the SQLite and Redis stores (with the exactly-once batch
ledger), `postgres` the PostgreSQL store, `rollups` the 5- and 30-minute tables every store
keeps in the same transaction as the windows they sum.
"""
