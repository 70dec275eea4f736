"""Influence Lab gateway: the HTTP API, live run events over SSE, and the persister that
stores every run event in Postgres. Build the app with :func:`inflab.gateway.app.create_app`."""
