"""The embedded stack's supervisor: NATS, PostgreSQL, Ray and the four services as processes.

``inflab up`` and ``inflab demo`` need everything a researcher's laptop lacks, started from
packages and stopped without leftovers. :class:`Stack` is that supervisor::

    async with Stack(settings) as stack:      # starts everything, stops it all on exit
        await stack.wait_ready(timeout=120)   # gateway /readyz answers 200, services alive
        ...                                   # stack.settings holds the resolved URLs

What each child is given (command line, settings, environment) is :mod:`.environment`'s;
the record of what runs, ``INFLAB_HOME/stack.json``, is :mod:`.state`'s. This module
decides when things start, watches them, and stops them.

Start order is dependency order, stop order the reverse (services, Ray, PostgreSQL, NATS):

* NATS and PostgreSQL start from their wheels unless ``nats_url`` / ``database_url`` name
  servers; the embedded PostgreSQL gets a database ``inflab``, and the Alembic migrations
  run either way. The embedded NATS runs with authentication on: one generated user per
  role with the permissions of :mod:`inflab.core.nats_permissions`, credentials in
  ``INFLAB_HOME/secrets`` (see ``bus_credentials.py``); a client without one is refused.
  Each service gets its own role's credential and job key (:meth:`Stack.service_settings`);
  Ray, whose workers run user-chosen models and data, gets neither.
* Ray: a local head node unless ``ray_address`` names a cluster.
* Services: ``python -m inflab.<name>`` each (injectable, so tests run stand-ins). Each
  worker serves its Prometheus metrics on a free loopback port of its own
  (``INFLAB_METRICS_PORT``, chosen once and kept across restarts), recorded in
  ``stack.json`` and shown by ``inflab ps``.

Each child leads its own process group (a terminal's Ctrl-C reaches only the supervisor,
which then stops things in order), logs to ``INFLAB_HOME/logs/<name>.log``, and is asked
by the kernel to exit if the supervisor dies without stopping it; what such a supervisor
left behind, the next start stops (:func:`.state.reap_stale`).

A service that exits is reported (its exit code or signal, the tail of its log) and
restarted, forever, after a back-off that doubles with each crash in a row up to a cap and
starts again once a process has run long enough to count as healthy (``restarts.py``).
A service that keeps crashing is in a *crash loop*: the supervisor's log says so,
``stack.json`` (and so ``inflab ps``) shows it with the stack *degraded*, and everything
else keeps running. Only when NATS, PostgreSQL or Ray exits (or when a test asks for a
``max_restarts`` bound and a service exceeds it) is the stack *failed*:
:attr:`Stack.failed` is set and :meth:`Stack.wait_ready` raises.

:meth:`Stack.service_command` is each service's command line and environment, exactly as
the supervisor starts it (for tools that start or restart a service themselves).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit
from urllib.request import url2pathname

import httpx
import psutil
from pydantic import SecretStr

from inflab.core.job_signing import verify_key_of
from inflab.core.settings import Settings
from inflab.devtools.embedded._proc import (
    ServerProcess,
    die_with_parent,
    free_port,
    kill_group,
    log_tail,
    stop_process_tree,
)
from inflab.devtools.embedded.bus_credentials import BusCredentials
from inflab.devtools.embedded.environment import (
    DATABASE_NAME,
    METRICS_HOST,
    SERVICE_ENV,
    ServiceSpec,
    child_environment,
    default_services,
    embedded_settings,
)
from inflab.devtools.embedded.restarts import RestartPolicy, RestartTracker, exit_reason
from inflab.devtools.embedded.state import (
    Component,
    StackError,
    now,
    reap_stale,
    stack_status,
    state_path,
    write_state,
)

log = logging.getLogger("inflab.stack")

T = TypeVar("T")

LOGS_DIR = "logs"
#: How often wait_ready re-probes.
READY_POLL_S = 0.2


async def wait_process(process: subprocess.Popen) -> int:
    """Await a child's exit without a thread: the kernel makes a pidfd readable on exit."""
    if process.poll() is not None:
        return process.returncode
    loop = asyncio.get_running_loop()
    try:
        fd = os.pidfd_open(process.pid)
    except (AttributeError, OSError):  # no pidfd support: poll instead
        while process.poll() is None:
            await asyncio.sleep(0.5)
        return process.returncode
    exited = loop.create_future()
    try:
        loop.add_reader(fd, lambda: exited.done() or exited.set_result(None))
        if process.poll() is None:
            await exited
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    return process.wait()  # it has exited: this only reaps, without blocking


async def _in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run a blocking step in a thread. If we are cancelled meanwhile, let the step finish
    first, so that stop() sees whatever it started (a cancelled await alone would leave the
    thread starting a server that nobody then stops)."""
    task = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await asyncio.wait([task])
        raise


@dataclass
class _Service:
    spec: ServiceSpec
    component: Component
    tracker: RestartTracker
    process: subprocess.Popen | None = None
    watcher: asyncio.Task | None = None


@dataclass
class _Server:
    server: ServerProcess
    component: Component
    watcher: asyncio.Task | None = None


class Stack:
    """Starts the embedded stack as OS processes and stops all of them cleanly.

    ``services`` defaults to the four real services; ``with_ray=False`` and
    ``migrate=False`` leave those steps out (tests of the supervisor itself).
    A crashed service is restarted forever (see ``restarts.py`` for the back-off the
    ``restart_*``, ``healthy_after_s`` and ``crash_loop_after`` arguments set); only a
    given ``max_restarts`` turns more restarts than that into a failed stack.
    """

    def __init__(
        self,
        settings: Settings,
        services: Sequence[ServiceSpec] | None = None,
        *,
        max_restarts: int | None = None,
        restart_backoff_s: float = 1.0,
        restart_backoff_max_s: float = 30.0,
        healthy_after_s: float = 60.0,
        crash_loop_after: int = 3,
        stop_timeout_s: float = 15.0,
        with_ray: bool = True,
        migrate: bool = True,
    ) -> None:
        self.base_settings = settings
        #: The settings the children see: the embedded defaults, and the URLs of what
        #: this stack started filled in.
        #: Its NATS URL holds no credential and it holds no job key: each service gets only
        #: its own (:meth:`service_settings`), and Ray (which runs user-chosen models and
        #: data) none.
        self.settings = embedded_settings(settings).model_copy(
            update={"job_signing_key": SecretStr(""), "job_verify_key": ""}
        )
        #: The bus secrets in the state folder (see bus_credentials.py).
        self.credentials = BusCredentials(settings.home)
        #: Each role's NATS URL with its credential, when this stack started NATS.
        self.nats_urls: dict[str, str] = {}
        self._job_keys: tuple[str, str] = ("", "")
        self.specs = list(services) if services is not None else default_services(settings)
        self.max_restarts = max_restarts
        self.restart_policy = RestartPolicy(
            initial_s=restart_backoff_s, max_s=restart_backoff_max_s,
            healthy_after_s=healthy_after_s, crash_loop_after=crash_loop_after,
        )
        self.stop_timeout_s = stop_timeout_s
        self.with_ray = with_ray
        self.migrate = migrate
        #: Set when a component failed for good; :attr:`failure` says which and why.
        self.failed = asyncio.Event()
        self.failure: str | None = None
        self._servers: list[_Server] = []
        self._services: list[_Service] = []
        self._components: list[Component] = []
        #: Environment for children beyond the settings (the Ray node's credentials).
        self._child_env_extra: dict[str, str] = {}
        self._metrics_ports: dict[str, int] = {}
        self._owns_state = False  # a refused start must not overwrite the running stack's file
        self._stopping = False
        self._stopped = False
        self._started_at = now()
        self._supervisor_create_time = psutil.Process().create_time()

    # -- paths and urls -------------------------------------------------------------------
    @property
    def home(self) -> Path:
        return self.base_settings.home

    @property
    def logs_dir(self) -> Path:
        return self.home / LOGS_DIR

    @property
    def state_path(self) -> Path:
        return state_path(self.base_settings)

    @property
    def gateway_url(self) -> str | None:
        for spec in self.specs:
            if spec.name == "gateway":
                return spec.url
        return None

    @property
    def components(self) -> list[Component]:
        return list(self._components)

    def server(self, name: str) -> ServerProcess | None:
        """The embedded ``nats``, ``postgres`` or ``ray`` this stack started, if it did."""
        return next((s.server for s in self._servers if s.server.name == name), None)

    def service_pids(self) -> dict[str, int]:
        return {s.spec.name: s.process.pid for s in self._services if s.process}

    def all_pids(self) -> list[int]:
        """Every pid this stack started (current ones): services and infrastructure."""
        pids = [s.process.pid for s in self._services if s.process]
        return pids + [s.server.pid for s in self._servers if s.server.pid]

    # -- context manager ------------------------------------------------------------------
    async def __aenter__(self) -> Stack:
        try:
            await self.start()
        except BaseException:
            await asyncio.shield(self.stop())
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.shield(self.stop())

    # -- start ----------------------------------------------------------------------------
    async def start(self) -> None:
        """Start everything in dependency order; returns once the services are spawned."""
        reaped = await _in_thread(reap_stale, self.state_path)
        if reaped:
            log.warning("stopped leftovers of a previous stack: %s", ", ".join(reaped))
        self._owns_state = True  # from here on, INFLAB_HOME/stack.json describes this stack
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self._prepare_object_store()
        self._job_keys = await _in_thread(self._load_job_keys)
        self._write_state()
        await self._start_nats()
        await self._start_postgres()
        if self.migrate:
            from inflab.core.db.migrate import upgrade

            log.info("migrating %s", self._redacted(self.settings.database_url))
            await _in_thread(upgrade, self.settings.database_url)
        await self._start_ray()
        for spec in self.specs:
            service = _Service(
                spec, Component(spec.name, "service", url=spec.url, health_url=spec.health_url,
                                metrics_url=self.metrics_url(spec.name)),
                RestartTracker(self.restart_policy),
            )
            self._services.append(service)
            self._components.append(service.component)
            self._spawn_service(service)
            service.watcher = asyncio.create_task(self._watch_service(service), name=f"watch-{spec.name}")
        self._write_state()

    async def _start_server(
        self,
        server: ServerProcess,
        component: Component,
        environment: Callable[[], Mapping[str, str]] | None = None,
    ) -> None:
        """prepare (thread), spawn (here), wait until ready (thread), then watch it.

        ``environment`` is called after ``prepare``, when the server's ports are known.
        """
        entry = _Server(server, component)
        self._servers.append(entry)
        self._components.append(component)
        await _in_thread(server.prepare)
        # Spawned on the event-loop thread: the kernel's "die with parent" follows the
        # thread that forked, and this one lives as long as the stack.
        server.spawn(environment() if environment else None)
        component.attach(server.process, server.log_path)
        component.status = "starting"
        self._write_state()
        await _in_thread(server.wait_ready)
        component.status = "running"
        self._write_state()
        entry.watcher = asyncio.create_task(self._watch_server(entry), name=f"watch-{server.name}")

    def _external(self, name: str, url: str) -> None:
        self._components.append(Component(name, "external", url=self._redacted(url), status="external"))

    async def _start_nats(self) -> None:
        if self.base_settings.nats_url:
            return self._external("nats", self.base_settings.nats_url)
        from inflab.devtools.embedded.nats import EmbeddedNats
        from inflab.core.subjects import Subjects

        # Authentication on: one user per role, nobody without credentials.
        passwords = await _in_thread(self.credentials.write_nats, Subjects.from_settings(self.settings))
        nats = EmbeddedNats(
            self.home / "nats",
            self.base_settings.embedded_nats_port,
            log_path=self.logs_dir / "nats.log",
            parent_death_signal=True,
            config_file=self.credentials.authorization_file,
        )
        comp = Component("nats", "nats", stop_signal=int(nats.stop_signal))
        await self._start_server(nats, comp)
        comp.url = self.settings.nats_url = nats.url
        self.nats_urls = await _in_thread(self.credentials.write_urls, passwords, nats.host, nats.port)
        self._write_state()

    def _load_job_keys(self) -> tuple[str, str]:
        """The given signing key (and its verify key), or the state folder's pair."""
        given = self.base_settings.job_signing_key.get_secret_value()
        if given:
            return given, self.base_settings.job_verify_key or verify_key_of(given)
        return self.credentials.job_keys()

    def service_settings(self, name: str) -> Settings:
        """What service ``name`` is given: its own role's NATS credential (when this stack
        started NATS), and the gateway the signing key, a worker the verify key."""
        signing, verify = self._job_keys
        update: dict[str, Any] = {
            "job_signing_key": SecretStr(signing if name == "gateway" else ""),
            "job_verify_key": verify if name != "gateway" else "",
        }
        if self.nats_urls:
            update |= {"nats_url": self.nats_urls.get(name, self.settings.nats_url), "nats_user": "",
                       "nats_password": SecretStr(""), "nats_creds_file": None}
        return self.settings.model_copy(update=update)

    async def _start_postgres(self) -> None:
        if self.base_settings.database_url:
            return self._external("postgres", self.base_settings.database_url)
        from inflab.devtools.embedded.postgres import EmbeddedPostgres, ensure_database

        postgres = EmbeddedPostgres(
            self.home / "postgres",
            self.base_settings.embedded_postgres_port,
            log_path=self.logs_dir / "postgres.log",
            durable=True,  # it persists under INFLAB_HOME
            parent_death_signal=True,
        )
        comp = Component("postgres", "postgres", stop_signal=int(postgres.stop_signal))
        await self._start_server(postgres, comp)
        comp.url = self.settings.database_url = await ensure_database(postgres.url, DATABASE_NAME)
        self._write_state()

    async def _start_ray(self) -> None:
        if self.base_settings.ray_address:
            return self._external("ray", self.base_settings.ray_address)
        if not self.with_ray:
            return
        from inflab.devtools.embedded.ray import EmbeddedRay, default_num_cpus

        s = self.base_settings
        ray = EmbeddedRay(
            self.logs_dir / "ray.log",
            num_cpus=default_num_cpus(s.train_num_cpus, s.inference_num_cpus, s.influence_num_cpus),
            parent_death_signal=True,
        )
        comp = Component("ray", "ray", stop_signal=int(ray.stop_signal))

        def environment() -> dict[str, str]:
            # Every child joins with this node's token; Ray's workers inherit the head's
            # environment, so they see the same settings as the services.
            comp.url = self.settings.ray_address = ray.address
            self._child_env_extra.update(ray.client_environment())
            return child_environment(self.settings, self._child_env_extra)

        await self._start_server(ray, comp, environment)
        self._link_ray_logs(ray)

    def _link_ray_logs(self, ray: Any) -> None:
        """``logs/ray-session`` -> Ray's own logs (workers' output lands there)."""
        link = self.logs_dir / "ray-session"
        with contextlib.suppress(OSError):
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(ray.session_logs)

    def _prepare_object_store(self) -> None:
        url = self.settings.objects_url
        self.settings.object_store_url = url
        parts = urlsplit(url)
        if parts.scheme == "file":
            Path(url2pathname(parts.path)).mkdir(parents=True, exist_ok=True)

    def service_command(self, name: str) -> tuple[list[str], dict[str, str]]:
        """Service ``name``'s command line and environment, as the supervisor starts it
        (its settings, its own NATS credential and job key, the stack's extra variables)."""
        spec = next((s for s in self.specs if s.name == name), None)
        if spec is None:
            raise KeyError(f"no service {name!r} in this stack")
        extra = self._child_env_extra | SERVICE_ENV
        if spec.metrics:
            extra |= {"INFLAB_METRICS_HOST": METRICS_HOST, "INFLAB_METRICS_PORT": str(self._metrics_port(name))}
        env = child_environment(self.service_settings(name), extra)
        return list(spec.argv), env

    def _metrics_port(self, name: str) -> int:
        """The worker's metrics port: chosen free once, then the same for every restart."""
        if name not in self._metrics_ports:
            self._metrics_ports[name] = free_port(METRICS_HOST)
        return self._metrics_ports[name]

    def metrics_url(self, name: str) -> str | None:
        """Where service ``name`` serves its Prometheus metrics (None: it serves none)."""
        spec = next((s for s in self.specs if s.name == name), None)
        if spec is None or not spec.metrics:
            return None
        return f"http://{METRICS_HOST}:{self._metrics_port(name)}/metrics"

    def _spawn_service(self, service: _Service) -> None:
        log_path = self.logs_dir / f"{service.spec.name}.log"
        argv, env = self.service_command(service.spec.name)
        with log_path.open("ab") as out:
            out.write(f"--- {now()} starting {' '.join(argv)}\n".encode())
            out.flush()
            service.process = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent(signal.SIGTERM),
            )
        service.component.attach(service.process, log_path)
        log.info("%s started (pid %s), log %s", service.spec.name, service.process.pid, log_path)

    # -- supervision ----------------------------------------------------------------------
    async def _watch_service(self, service: _Service) -> None:
        """Restart the service whenever it exits, after the policy's back-off, until stop()."""
        comp, tracker = service.component, service.tracker
        loop = asyncio.get_running_loop()
        tracker.started(loop.time())
        while True:
            code = await self._wait_exit(service)
            if self._stopping:
                return
            await _in_thread(kill_group, service.process.pid)  # whatever it forked dies too
            delay = tracker.exited(loop.time())
            comp.last_exit, comp.last_exit_at = exit_reason(code), now()
            comp.crashes_in_a_row, comp.crash_loop = tracker.crashes_in_a_row, tracker.crash_loop
            log.error(
                "%s (pid %s) exited: %s; restarts so far: %d; last lines of %s:\n%s",
                comp.name, service.process.pid, comp.last_exit, comp.restarts, comp.log,
                log_tail(Path(comp.log), 15),
            )
            if self.max_restarts is not None and comp.restarts >= self.max_restarts:
                comp.status = "failed"
                self._fail(f"{comp.name} exited ({comp.last_exit}) after {comp.restarts} restarts")
                return
            if comp.crash_loop:
                log.error(
                    "%s is in a crash loop: %d exits in a row, each within %.0f s of its start; "
                    "restarting it in %.1f s (the rest of the stack keeps running)",
                    comp.name, comp.crashes_in_a_row, self.restart_policy.healthy_after_s, delay,
                )
            else:
                log.warning("restarting %s in %.1f s", comp.name, delay)
            comp.status = "restarting"
            self._write_state()
            # A deliberate back-off (not a readiness wait): a crash loop must not spin.
            await asyncio.sleep(delay)
            if self._stopping:
                return
            comp.restarts += 1
            self._spawn_service(service)
            tracker.started(loop.time())
            self._write_state()

    async def _wait_exit(self, service: _Service) -> int:
        """The process's exit code; meanwhile, once it has run long enough to count as
        healthy, its crash count (and any crash loop) is cleared."""
        comp, tracker = service.component, service.tracker
        exit_task = asyncio.ensure_future(wait_process(service.process))
        try:
            if tracker.crashes_in_a_row:
                done, _ = await asyncio.wait([exit_task], timeout=self.restart_policy.healthy_after_s)
                if not done and tracker.ran_healthy(asyncio.get_running_loop().time()):
                    if comp.crash_loop:
                        log.info("%s has run %.0f s since its restart: no longer in a crash loop",
                                 comp.name, self.restart_policy.healthy_after_s)
                    comp.crashes_in_a_row, comp.crash_loop = 0, False
                    self._write_state()
            return await exit_task
        finally:
            exit_task.cancel()

    async def _watch_server(self, entry: _Server) -> None:
        code = await wait_process(entry.server.process)
        if self._stopping:
            return
        entry.component.status = "failed"
        log.error(
            "%s exited with code %s; last lines of %s:\n%s",
            entry.server.name, code, entry.server.log_path, log_tail(entry.server.log_path, 15),
        )
        self._fail(f"{entry.server.name} exited with code {code}")

    def crash_loops(self) -> list[Component]:
        """The services in a crash loop now."""
        return [s.component for s in self._services if s.component.crash_loop]

    def _fail(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason
        self.failed.set()
        self._write_state()

    async def wait_ready(self, timeout: float = 120.0, *, allow_crash_loops: bool = False) -> None:
        """Until every service process is alive and every ready URL answers 200 (with
        ``allow_crash_loops``, services in a crash loop aside: see :meth:`crash_loops`).

        Raises :class:`StackError` when the stack fails meanwhile or after ``timeout``.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        waiting: list[str] = []
        # trust_env=False: a proxy configured for the internet must not see our own probes.
        async with httpx.AsyncClient(timeout=2.0, trust_env=False) as client:
            while True:
                if self.failed.is_set():
                    raise StackError(f"stack failed: {self.failure}")
                waiting = []
                for s in self._services:
                    if s.component.crash_loop:
                        # Reported in the state file and the log; alive between two crashes
                        # is not ready.
                        if not allow_crash_loops:
                            waiting.append(f"{s.spec.name} (crash loop; last exit: {s.component.last_exit})")
                        continue
                    if not s.process or s.process.poll() is not None:
                        waiting.append(s.spec.name)
                    elif s.spec.ready_url and not await _answers(client, s.spec.ready_url):
                        waiting.append(f"{s.spec.name} ({s.spec.ready_url})")
                if not waiting:
                    return
                if loop.time() > deadline:
                    raise StackError(f"not ready after {timeout:.0f}s: {', '.join(waiting)}; logs in {self.logs_dir}")
                await asyncio.sleep(READY_POLL_S)

    # -- stop -----------------------------------------------------------------------------
    async def stop(self) -> None:
        """Stop everything: services first, then Ray, PostgreSQL, NATS. Idempotent."""
        if self._stopped:
            return
        self._stopping = True
        watchers = [w for w in [*(s.watcher for s in self._services), *(s.watcher for s in self._servers)] if w]
        for watcher in watchers:
            watcher.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)

        async def stop_service(service: _Service) -> None:
            if service.process is not None:
                await _in_thread(self._stop_child, service.process, signal.SIGTERM)
            service.component.status = "stopped"

        await asyncio.gather(*(stop_service(s) for s in self._services), return_exceptions=True)
        self._write_state()
        for entry in reversed(self._servers):  # Ray, PostgreSQL, NATS
            try:
                await _in_thread(entry.server.stop)
            except Exception:
                log.exception("stopping %s failed", entry.server.name)
            entry.component.status = "stopped"
            self._write_state()
        self._stopped = True
        self._write_state()
        log.info("stack stopped")

    def _stop_child(self, process: subprocess.Popen, sig: int) -> None:
        if process.poll() is None:
            stop_process_tree(process.pid, sig, self.stop_timeout_s)
        else:
            kill_group(process.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5.0)

    # -- state file -----------------------------------------------------------------------
    def _write_state(self) -> None:
        if not self._owns_state:
            return
        write_state(
            self.state_path,
            self._components,
            status=stack_status(stopped=self._stopped, failed=self.failed.is_set(), stopping=self._stopping,
                                components=self._components),
            failure=self.failure,
            started_at=self._started_at,
            supervisor_create_time=self._supervisor_create_time,
            logs_dir=self.logs_dir,
            gateway_url=self.gateway_url,
            mail_dir=None if self.settings.smtp_host else self.settings.mail_folder,
            nats_credentials=self.credentials.url_files() if self.nats_urls else {},
        )

    @staticmethod
    def _redacted(url: str) -> str:
        parts = urlsplit(url)
        if parts.password:
            netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
            return parts._replace(netloc=netloc).geturl()
        return url


async def _answers(client: httpx.AsyncClient, url: str) -> bool:
    try:
        return (await client.get(url)).status_code == 200
    except httpx.HTTPError:
        return False
