"""Prometheus metrics of a worker service (trainer, inference, influence).

Each worker serves them over plain HTTP on a port of its own (``INFLAB_METRICS_HOST`` /
``INFLAB_METRICS_PORT``; port 0, the default outside the embedded stack, serves none):
a worker has no HTTP server otherwise. With ``INFLAB_METRICS_TOKEN`` set, ``/metrics``
answers only that bearer token (401 otherwise), as the gateway's does, so one Prometheus
credential scrapes them all; without one it is open (its figures hold no user data and no
run ids; keep the port inside the cluster). The embedded stack gives each worker a free
loopback port and shows it in ``inflab ps``.

What is counted, all labelled by ``stage`` (``train``, ``inference``, ``influence``):

(and ``validation``, the trainer's second stage, served on the trainer's port):

* ``inflab_worker_jobs_total{stage, outcome}``: deliveries of job requests by what became
  of them: ``acked`` (the handler finished; the stage's own verdict is the next metric),
  ``retried`` (it raised; given back for a redelivery), ``dead_lettered``, ``given_back``
  (NATS was unreachable while it worked: given back without counting as its failure),
  ``interrupted`` (the worker stopped mid-job; another takes it up);
* ``inflab_worker_stage_results_total{stage, status}``: the stage's final status events
  (``completed``, ``failed``, ``cancelled``) this worker published;
* ``inflab_worker_stage_duration_seconds{stage, outcome}``: a histogram of how long the
  handler ran for one delivery, by the outcome above;
* ``inflab_worker_jobs_in_progress{stage}``;
* ``inflab_worker_redeliveries_total{stage}``: deliveries that were not a message's first;
* ``inflab_worker_dead_letters_total{stage, reason}``: ``refused`` (no valid signature or
  an unparsable payload: it never reached the handler), ``rejected`` (the handler refused
  it), ``exhausted`` (every delivery failed, or the worker died on each);
* ``inflab_worker_consumer_pending{stage}``, ``..._ack_pending``, ``..._redelivered``:
  the durable consumer's backlog (not yet delivered), deliveries awaiting their ack, and
  messages being redelivered, polled from JetStream every ``INFLAB_METRICS_POLL_S``
  (``inflab_worker_consumer_info_errors_total`` counts failed polls);
* ``process_resident_memory_bytes`` and the other ``process_*`` figures of this process;
* ``inflab_worker_gpu_memory_used_bytes{device}`` / ``..._total_bytes{device}``: per CUDA
  device (the whole device, so the Ray tasks that do the work are included), only where
  a GPU is present.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import sys
import threading
from collections.abc import Awaitable, Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client import generate_latest
from prometheus_client.core import GaugeMetricFamily

from inflab.core.vocabulary import TERMINAL_STATUSES

log = logging.getLogger(__name__)

#: Seconds: a job is anything from a refused request (milliseconds) to hours of training.
DURATION_BUCKETS = (0.05, 0.25, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)
#: The stage's final statuses (a ``running`` status event is not a result).
FINAL_STATUSES = tuple(sorted(TERMINAL_STATUSES))


class WorkerMetrics:
    """A worker's metrics for one ``stage``, in a registry of its own (tests run several in
    one process), or, made by :meth:`for_stage`, in the registry of another: a process that
    consumes several stages (the trainer also runs validations) serves them on one port."""

    def __init__(self, stage: str, *, _shared: WorkerMetrics | None = None) -> None:
        self.stage = stage
        self._server: Any = None
        if _shared is not None:
            for name in _FAMILIES:
                setattr(self, name, getattr(_shared, name))
            self.registry = _shared.registry
            self._prepare(stage)
            return
        self.registry = CollectorRegistry()
        r = self.registry
        self.jobs = Counter("inflab_worker_jobs", "Job request deliveries, by what became of them.",
                            ["stage", "outcome"], registry=r)
        self.results = Counter("inflab_worker_stage_results", "Final status events the stage published.",
                               ["stage", "status"], registry=r)
        self.duration = Histogram("inflab_worker_stage_duration_seconds",
                                  "Time the handler ran for one delivery, by outcome.",
                                  ["stage", "outcome"], buckets=DURATION_BUCKETS, registry=r)
        self.in_progress = Gauge("inflab_worker_jobs_in_progress", "Deliveries being handled now.",
                                 ["stage"], registry=r)
        self.redeliveries = Counter("inflab_worker_redeliveries", "Deliveries that were not the message's first.",
                                    ["stage"], registry=r)
        self.dead_letters = Counter("inflab_worker_dead_letters", "Job requests dead-lettered, by why.",
                                    ["stage", "reason"], registry=r)
        self.pending = Gauge("inflab_worker_consumer_pending",
                             "Job requests in the stream not yet delivered to this service's consumer.",
                             ["stage"], registry=r)
        self.ack_pending = Gauge("inflab_worker_consumer_ack_pending",
                                 "Deliveries of this service's consumer awaiting their ack.", ["stage"], registry=r)
        self.redelivered = Gauge("inflab_worker_consumer_redelivered",
                                 "Messages of this service's consumer being redelivered.", ["stage"], registry=r)
        self.info_errors = Counter("inflab_worker_consumer_info_errors",
                                   "Polls of the consumer's info that failed.", ["stage"], registry=r)
        ProcessCollector(registry=r)
        r.register(_GpuMemory())
        self._prepare(stage)

    def for_stage(self, stage: str) -> WorkerMetrics:
        """The same registry's metrics, labelled with another ``stage``."""
        return WorkerMetrics(stage, _shared=self)

    def _prepare(self, stage: str) -> None:
        # Every series exists from the start, at 0: a rate or an alert needs no first event.
        for outcome in ("acked", "retried", "dead_lettered", "given_back", "interrupted"):
            self.jobs.labels(stage, outcome)
        for status in FINAL_STATUSES:
            self.results.labels(stage, status)
        for reason in ("refused", "rejected", "exhausted"):
            self.dead_letters.labels(stage, reason)
        self.redeliveries.labels(stage)
        self.in_progress.labels(stage)
        self.info_errors.labels(stage)

    # -- serving -------------------------------------------------------------------------
    def serve(self, host: str, port: int, token: str = "") -> int:
        """Serve ``/metrics`` on ``host:port`` from a thread (only to ``Authorization:
        Bearer <token>`` when a token is given); returns the port listened on."""
        server = ThreadingHTTPServer((host, port), _handler(self.registry, token))
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name="worker-metrics", daemon=True).start()
        self._server = server
        return server.server_address[1]

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -- hooks ---------------------------------------------------------------------------
    def instrument(self, bus: Any, handler: Callable[..., Awaitable[None]], max_deliver: int) -> Callable:
        """Count what ``bus`` does with job requests, and return ``handler`` wrapped to time
        and count each delivery. The bus's dead-letter and event publishing are wrapped on
        this one instance (the bus module itself is unchanged)."""
        from inflab.core.bus import BusUnavailable, Rejected

        stage = self.stage
        reached_handler: dict[int, str] = {}  # id(msg) -> dead-letter reason, set just before
        dead_letter, publish_event = bus.dead_letter, bus.publish_event

        async def counting_dead_letter(msg: Any, reason: str) -> None:
            why = reached_handler.pop(id(msg), None)
            if why is None:  # before the handler: past the limit (the worker died on it each time), or refused
                why = "exhausted" if _deliveries(msg) > max_deliver else "refused"
            self.dead_letters.labels(stage, why).inc()
            await dead_letter(msg, reason)

        async def counting_publish_event(event: Any) -> None:
            await publish_event(event)
            if getattr(event, "kind", None) == "status" and event.status in FINAL_STATUSES:
                self.results.labels(stage, event.status).inc()

        bus.dead_letter = counting_dead_letter
        bus.publish_event = counting_publish_event

        async def timed(request: Any, msg: Any) -> None:
            deliveries = _deliveries(msg)
            if deliveries > 1:
                self.redeliveries.labels(stage).inc()
            outcome = "acked"
            last = deliveries >= max_deliver
            self.in_progress.labels(stage).inc()
            loop = asyncio.get_running_loop()
            began = loop.time()
            try:
                await handler(request, msg)
            except asyncio.CancelledError:
                outcome = "interrupted"
                raise
            except Rejected:
                outcome = "dead_lettered"
                reached_handler[id(msg)] = "rejected"
                raise
            except BusUnavailable:
                outcome = "dead_lettered" if last else "given_back"
                if last:
                    reached_handler[id(msg)] = "exhausted"
                raise
            except Exception:
                outcome = "dead_lettered" if last else "retried"
                if last:
                    reached_handler[id(msg)] = "exhausted"
                raise
            finally:
                self.in_progress.labels(stage).dec()
                self.jobs.labels(stage, outcome).inc()
                self.duration.labels(stage, outcome).observe(loop.time() - began)

        return timed

    async def poll_consumer(self, js: Any, stream: str, durable: str, stop: asyncio.Event, interval_s: float) -> None:
        """Keep the consumer gauges current until ``stop``."""
        while not stop.is_set():
            await self.read_consumer(js, stream, durable)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)

    async def read_consumer(self, js: Any, stream: str, durable: str) -> bool:
        """Set the consumer gauges from JetStream once; a failure is counted, not raised."""
        try:
            info = await js.consumer_info(stream, durable)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # not created yet, NATS away: the next poll will tell
            self.info_errors.labels(self.stage).inc()
            log.debug("consumer info for %s failed: %r", durable, exc)
            return False
        self.pending.labels(self.stage).set(info.num_pending or 0)
        self.ack_pending.labels(self.stage).set(info.num_ack_pending or 0)
        self.redelivered.labels(self.stage).set(info.num_redelivered or 0)
        return True


#: The metric families a stage's view shares with the registry's first.
_FAMILIES = ("jobs", "results", "duration", "in_progress", "redeliveries", "dead_letters", "pending", "ack_pending",
             "redelivered", "info_errors")


def _handler(registry: CollectorRegistry, token: str) -> type[BaseHTTPRequestHandler]:
    expected = token.encode()

    class MetricsHandler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if urlsplit(self.path).path != "/metrics":
                return self._answer(404, b"only /metrics here\n", "text/plain")
            scheme, _, sent = self.headers.get("Authorization", "").partition(" ")
            if token and (scheme.lower() != "bearer" or not hmac.compare_digest(sent.strip().encode(), expected)):
                return self._answer(401, b"send the metrics token as a bearer token\n", "text/plain",
                                    {"WWW-Authenticate": "Bearer"})
            self._answer(200, generate_latest(registry), CONTENT_TYPE_LATEST)

        def _answer(self, code: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:  # scrapes every few seconds: not worth a line
            pass

    return MetricsHandler


def _deliveries(msg: Any) -> int:
    try:
        return int(msg.metadata.num_delivered)
    except Exception:
        return 1


class _GpuMemory:
    """Device memory of each CUDA device, read at scrape time; nothing without a GPU.

    Through NVML (``pynvml``) where installed, which sees the whole device without making
    a CUDA context in this process; else through torch, only once this process uses CUDA
    already (a context costs hundreds of MB of device memory, too much for a metric)."""

    def collect(self):
        readings = _nvml_memory() or _torch_memory()
        if not readings:
            return
        used = GaugeMetricFamily("inflab_worker_gpu_memory_used_bytes", "Memory in use on each CUDA device.",
                                 labels=["device"])
        total = GaugeMetricFamily("inflab_worker_gpu_memory_total_bytes", "Memory of each CUDA device.",
                                  labels=["device"])
        for device, (in_use, size) in readings.items():
            used.add_metric([device], in_use)
            total.add_metric([device], size)
        yield used
        yield total

    def describe(self):
        return []  # read at scrape time only: registering must not touch the GPU


def _nvml_memory() -> dict[str, tuple[int, int]]:
    try:
        import pynvml
    except ImportError:
        return {}
    try:
        pynvml.nvmlInit()
        readings = {}
        for index in range(pynvml.nvmlDeviceGetCount()):
            info = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index))
            readings[str(index)] = (int(info.used), int(info.total))
        return readings
    except Exception:
        return {}


def _torch_memory() -> dict[str, tuple[int, int]]:
    torch = sys.modules.get("torch")  # never imported here just for a metric
    if torch is None:
        return {}
    try:
        if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
            return {}
        readings = {}
        for index in range(torch.cuda.device_count()):
            free, size = torch.cuda.mem_get_info(index)
            readings[str(index)] = (int(size - free), int(size))
        return readings
    except Exception:
        return {}
