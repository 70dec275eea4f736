"""Who may publish and subscribe to what on NATS: one user per role, its permissions
derived from the subject names (:mod:`inflab.core.subjects`), and the nats-server
``authorization`` block that enforces them. The embedded stack, the tests and the Helm
chart all take their rules from here, so there is one set of rules.

Roles:

* ``gateway``: publishes job requests and control messages, creates and updates the
  product's streams, consumes every run event, every submission and every dead letter (its
  pull consumers' messages reach it on its own inbox; no one holds a subscription on
  ``run.submit``).
* ``trainer``, ``inference``, ``influence``: take their stage's job requests (their own
  durable pull consumer), publish only their stage's event kinds and their dead letters;
  the trainer also reads the control stream, and takes validation requests (a second
  durable) and publishes validation events.
* ``pipeline``: other teams' pipelines. Publishes ``run.submit`` and nothing else on the
  product's subjects; reads the gateway's answer to a submission
  (``submission.{submission_id}``, no token or experiment in it) and follows its runs over
  HTTP with its API token.
* ``operator``: everything, the JetStream API included (administration, debugging).

JetStream API access is per stream and per consumer: each role gets the exact
``$JS.API.*`` subjects its nats-py calls use (stream info/create/update for the gateway;
consumer info, create and ``MSG.NEXT`` for a role's own durables; the ``$JS.ACK`` replies of
its own consumers), and ``$JS.API.>`` only for the operator.

Replies (publish acks, API answers, pulled messages) come back on the client's inbox.
Each role has its own inbox prefix, ``_INBOX.<role>``, and may subscribe under it only:
with the default ``_INBOX.>`` for everyone, a pipeline could subscribe to the gateway's
inbox and read the submissions (and their API tokens) pulled there. A client of a role
must connect with that prefix (nats-py: ``inbox_prefix="_INBOX.pipeline"``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from inflab.core.subjects import REQUEST_STAGES, STAGE_EVENT_KINDS, Subjects
from inflab.core.vocabulary import RequestStage

JS_API = "$JS.API"

#: Every role, in the order the embedded stack lists them.
ROLES = ("gateway", "trainer", "inference", "influence", "pipeline", "operator")
#: The services among them, and the stage each worker serves.
WORKER_STAGES: dict[str, RequestStage] = {"trainer": "train", "inference": "inference", "influence": "influence"}
#: Follow-up jobs a worker also takes (its own durable each): the trainer retrains for
#: validations.
WORKER_FOLLOW_UPS: dict[str, tuple[RequestStage, ...]] = {"trainer": ("validation",)}


def follow_up_durable(role: str, stage: str) -> str:
    """The durable name (before the stream prefix) of ``role``'s consumer of ``stage``."""
    return f"{role}_{stage}"


def inbox_prefix(role: str) -> str:
    """The inbox prefix a client of ``role`` must connect with (the operator may use any)."""
    return f"_INBOX.{role}" if role in ROLES and role != "operator" else "_INBOX"


@dataclass(frozen=True)
class Permissions:
    """What one user may do: subjects it may publish to and subscribe to (NATS wildcards)."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]

    def as_config(self) -> dict:
        return {"publish": {"allow": list(self.publish)}, "subscribe": {"allow": list(self.subscribe)}}


@dataclass(frozen=True)
class Consumer:
    """A durable pull consumer a role owns: the API subjects to create, inspect and pull
    from it, and the ack replies of its messages."""

    stream: str
    durable: str
    filter_subject: str

    def api(self) -> list[str]:
        s, d = self.stream, self.durable
        return [
            f"{JS_API}.CONSUMER.INFO.{s}.{d}",
            # nats-py names the filter in the create subject (server 2.9+); the server checks
            # that the configuration asks for the same filter, so a role cannot widen it.
            f"{JS_API}.CONSUMER.CREATE.{s}.{d}.{self.filter_subject}",
            f"{JS_API}.CONSUMER.MSG.NEXT.{s}.{d}",
            # ack, nak, in_progress, term
            f"$JS.ACK.{s}.{d}.>",
        ]


@dataclass(frozen=True)
class RolePermissions:
    """Every role's permissions for one deployment's subject and stream prefixes."""

    subjects: Subjects = field(default_factory=Subjects)

    # -- who owns what ------------------------------------------------------------------
    def streams(self) -> list[str]:
        s = self.subjects
        return [s.jobs_stream, s.submissions_stream, s.events_stream, s.control_stream, s.dead_letter_stream,
                f"KV_{s.leases_bucket}"]

    def consumers(self, role: str) -> list[Consumer]:
        """The durable consumers ``role`` creates and pulls from (names as the services
        give them: ``Subjects.durable``)."""
        s = self.subjects
        if role == "gateway":
            return [
                Consumer(s.events_stream, s.durable("gateway_events"), s.all_events),
                Consumer(s.submissions_stream, s.durable("gateway_submissions"), s.run_submit),
                # Rejected job requests fail their runs (inflab.gateway.deadletters).
                Consumer(s.dead_letter_stream, s.durable("gateway_deadletters"), s.all_dead_letters),
            ]
        if role in WORKER_STAGES:
            return [Consumer(s.jobs_stream, s.durable(role), s.request(WORKER_STAGES[role]))] + [
                Consumer(s.jobs_stream, s.durable(follow_up_durable(role, stage)), s.request(stage))
                for stage in WORKER_FOLLOW_UPS.get(role, ())
            ]
        return []

    # -- permissions ----------------------------------------------------------------------
    def for_role(self, role: str) -> Permissions:
        if role not in ROLES:
            raise ValueError(f"unknown NATS role {role!r}; roles are {list(ROLES)}")
        if role == "operator":
            return Permissions(publish=(">",), subscribe=(">",))
        s = self.subjects
        inbox = f"{inbox_prefix(role)}.>"
        if role == "pipeline":
            return Permissions(publish=(s.run_submit,), subscribe=(inbox, s.submission_outcome("*")))
        publish: list[str] = []
        subscribe: list[str] = [inbox]
        for consumer in self.consumers(role):
            publish += consumer.api()
        if role == "gateway":
            publish += [s.request(stage) for stage in REQUEST_STAGES]
            publish.append(s.control("*"))
            publish.append(s.dead_letter("gateway"))
            publish.append(s.submission_outcome("*"))
            # Core NATS pokes between gateway replicas (see inflab.gateway.persister).
            publish.append(self.gateway_pokes)
            subscribe.append(self.gateway_pokes)
            # One replica at a time persists the events (inflab.gateway.persister).
            publish += self._lease_keeper()
            for stream in self.streams():
                publish += [f"{JS_API}.STREAM.{op}.{stream}" for op in ("INFO", "CREATE", "UPDATE")]
        else:
            for stage in (WORKER_STAGES[role], *WORKER_FOLLOW_UPS.get(role, ())):
                publish += [s.stage_events(stage, kind) for kind in STAGE_EVENT_KINDS[stage]]
            publish.append(s.dead_letter(role))
            if role == "trainer":
                publish += self._control_reader()
                publish += self._lease_keeper()
        return Permissions(publish=tuple(publish), subscribe=tuple(subscribe))

    @property
    def gateway_pokes(self) -> str:
        return f"{self.subjects.root}.gateway.persisted.*"

    def _control_reader(self) -> list[str]:
        """The trainer's view of the control stream: an ordered consumer (ephemeral: nats-py
        creates it, and re-creates it after a gap, without a name, and the server drops it
        when unused) and the last message of a run's subject."""
        stream = self.subjects.control_stream
        return [
            f"{JS_API}.CONSUMER.CREATE.{stream}",
            f"{JS_API}.STREAM.MSG.GET.{stream}",
            # Flow-control replies of the ordered consumer.
            f"$JS.FC.{stream}.>",
        ]

    def _lease_keeper(self) -> list[str]:
        """Leases (inflab.core.leases; the trainer's on runs, the gateway's on persisting
        events): write the bucket's keys (a
        compare-and-set publish), read one (direct get, or message get), look the bucket up."""
        bucket = self.subjects.leases_bucket
        stream = f"KV_{bucket}"
        return [
            f"$KV.{bucket}.>",
            f"{JS_API}.STREAM.INFO.{stream}",
            f"{JS_API}.DIRECT.GET.{stream}.>",
            f"{JS_API}.STREAM.MSG.GET.{stream}",
        ]

    def all(self) -> dict[str, Permissions]:
        return {role: self.for_role(role) for role in ROLES}


def authorization_config(passwords: Mapping[str, str], subjects: Subjects | None = None) -> str:
    """The nats-server ``authorization`` block: one user per role in ``passwords`` (role ->
    password), named as the role, with its permissions. No ``no_auth_user``: a client
    without credentials is refused. Passwords are stored as bcrypt hashes (what
    nats-server checks against), so the file itself lets nobody in."""
    rules = RolePermissions(subjects or Subjects())
    users = [
        {"user": role, "password": bcrypt_hash(password), "permissions": rules.for_role(role).as_config()}
        for role, password in passwords.items()
    ]
    # nats-server reads JSON inside its configuration format; quoted strings are literal, so
    # "$JS.API..." is a subject, not a variable.
    return "authorization " + json.dumps({"users": users}, indent=2) + "\n"


#: bcrypt cost: nats-server checks it once per connection, and connections are long-lived.
BCRYPT_ROUNDS = 10


def bcrypt_hash(password: str) -> str:
    import bcrypt  # the embedded extra; only what writes a server configuration needs it

    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(BCRYPT_ROUNDS)).decode()
