"""Dashboard: the live Streamlit app on top of the serving store.

`data` reads a snapshot of the store (at the grain each range needs, merging new batches into
the previous snapshot), `app` draws it, and `proxy` serves it inside JupyterLab.
"""
