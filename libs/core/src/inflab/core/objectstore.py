"""Object storage behind one small interface, on obstore (one Rust library for a local
folder, S3-compatible stores, GCS and Azure, with sync and async calls; chosen over
fsspec/boto3 because both backends we need come from the same code path).

Where a run's files lie in it: ``inflab.core.store_layout`` (re-exported here).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import obstore
from obstore.store import from_url

from inflab.core.store_layout import checkpoint_prefix, influence_key, run_prefix

__all__ = ["ObjectStore", "checkpoint_prefix", "influence_key", "run_prefix"]

#: Bytes read (and sent as one part of a multipart upload) at a time by ``put_file``:
#: obstore's default part size, above S3's 5 MiB minimum for every part but the last.
FILE_CHUNK = 5 * 1024 * 1024


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
        return sorted(self.sizes(prefix))

    def sizes(self, prefix: str) -> dict[str, int]:
        """Every key under ``prefix`` (whole path segments: ``models/a`` is not
        ``models/ab``) with its size in bytes."""
        found: dict[str, int] = {}
        for batch in obstore.list(self._store, prefix):
            found.update((item["path"], item["size"]) for item in batch)
        return found

    def delete(self, key: str) -> None:
        """Remove ``key``; nothing happens when it is not there."""
        try:
            obstore.delete(self._store, key)
        except FileNotFoundError:
            pass

    def put_file(self, key: str, path: Path, on_bytes: Callable[[int], None] | None = None,
                 chunk_size: int = FILE_CHUNK) -> None:
        """Stream a local file to ``key`` without holding it in memory (a model's weights
        are hundreds of MB; obstore turns a stream into a multipart upload), calling
        ``on_bytes`` with each chunk's size as it is read, for a progress bar."""

        def chunks() -> Iterator[bytes]:
            with open(path, "rb") as fh:
                while chunk := fh.read(chunk_size):
                    if on_bytes is not None:
                        on_bytes(len(chunk))
                    yield chunk

        if Path(path).stat().st_size == 0:
            self.put(key, b"")  # an empty stream would be a multipart upload of no parts
        else:
            obstore.put(self._store, key, chunks(), chunk_size=chunk_size)

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
