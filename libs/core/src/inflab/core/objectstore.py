"""Object storage behind one small interface, on obstore (one Rust library for a local
folder, S3-compatible stores, GCS and Azure, with sync and async calls; chosen over
fsspec/boto3 because both backends we need come from the same code path).

Layout: ``runs/{run_id}/checkpoints/{step}/`` holds the PEFT adapter files,
``runs/{run_id}/influence/{method}.safetensors`` the influence matrices.
"""

from __future__ import annotations

from pathlib import Path

import obstore
from obstore.store import from_url


def checkpoint_prefix(run_id: object, step: int) -> str:
    return f"runs/{run_id}/checkpoints/{step:08d}"


def influence_key(run_id: object, method: str, variant: str = "raw") -> str:
    suffix = "" if variant == "raw" else f".{variant}"
    return f"runs/{run_id}/influence/{method}{suffix}.safetensors"


def run_prefix(run_id: object) -> str:
    return f"runs/{run_id}"


class ObjectStore:
    """``file:///abs/path`` (created if missing), ``s3://bucket/prefix`` or ``memory://``."""

    def __init__(self, url: str, **options):
        self.url = url
        if url.startswith("file://"):
            Path(url[len("file://"):]).mkdir(parents=True, exist_ok=True)
            self._store = from_url(url, mkdir=True)
        else:
            self._store = from_url(url, **options)

    # sync (Ray tasks, CLI) ----------------------------------------------------------
    def put(self, key: str, data: bytes) -> None:
        obstore.put(self._store, key, data)

    def get(self, key: str) -> bytes:
        return bytes(obstore.get(self._store, key).bytes())

    def exists(self, key: str) -> bool:
        try:
            obstore.head(self._store, key)
            return True
        except FileNotFoundError:
            return False

    def list(self, prefix: str) -> list[str]:
        keys: list[str] = []
        for batch in obstore.list(self._store, prefix):
            keys.extend(item["path"] for item in batch)
        return sorted(keys)

    def upload_dir(self, local_dir: Path, prefix: str) -> list[str]:
        keys = []
        for path in sorted(Path(local_dir).rglob("*")):
            if path.is_file():
                key = f"{prefix}/{path.relative_to(local_dir).as_posix()}"
                self.put(key, path.read_bytes())
                keys.append(key)
        return keys

    def download_dir(self, prefix: str, local_dir: Path) -> Path:
        local_dir = Path(local_dir)
        keys = self.list(prefix)
        if not keys:
            raise FileNotFoundError(f"nothing stored under {prefix!r}")
        for key in keys:
            target = local_dir / key[len(prefix):].lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self.get(key))
        return local_dir

    # async (services) ---------------------------------------------------------------
    async def put_async(self, key: str, data: bytes) -> None:
        await obstore.put_async(self._store, key, data)

    async def exists_async(self, key: str) -> bool:
        try:
            await obstore.head_async(self._store, key)
            return True
        except FileNotFoundError:
            return False

    async def get_async(self, key: str) -> bytes:
        result = await obstore.get_async(self._store, key)
        return bytes(await result.bytes_async())
