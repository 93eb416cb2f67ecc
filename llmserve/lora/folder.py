"""Where adapters live: a local folder (a path or ``file://``) or an S3 prefix (``s3://``).

Every direct subfolder holding an ``adapter_config.json`` is one adapter, named after the
subfolder. A local folder is read in place. An S3 prefix is read with ``fsspec``/``s3fs``
(any S3-compatible endpoint: ``AWS_ENDPOINT_URL`` and the usual AWS credential variables
are honoured) and each adapter is copied once into a node-local cache folder: into a
temporary folder first, renamed into place when complete, so a crash never leaves half
an adapter behind.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

CONFIG_FILE = "adapter_config.json"
CACHE_ENV = "LLMSERVE_CACHE_DIR"


class AdapterFolderError(Exception):
    """The folder could not be listed or an adapter could not be copied."""


class AdapterFolder(Protocol):
    uri: str

    def list_adapters(self) -> dict[str, str]:
        """Adapter name -> where its files are (a URI or a local path)."""
        ...

    def read_config(self, name: str) -> bytes:
        """The adapter's ``adapter_config.json``."""
        ...

    def local_copy(self, name: str) -> tuple[Path, bool]:
        """A local folder with the adapter's files, and whether it was downloaded now
        (blocking; call it in a thread)."""
        ...


def open_folder(uri: str, cache_dir: Path | None = None) -> AdapterFolder:
    """The folder ``uri`` names; a ``ValueError`` names an unsupported scheme."""
    scheme = urlparse(check_folder_uri(uri)).scheme
    if scheme == "s3":
        return S3Folder(uri, cache_dir or default_cache_dir())
    return LocalFolder(Path(uri.removeprefix("file://")) if scheme else Path(uri))


def check_folder_uri(uri: str) -> str:
    """``uri`` if :func:`open_folder` can read it, else a ``ValueError`` naming the scheme."""
    scheme = urlparse(uri).scheme
    if scheme not in ("", "file", "s3"):
        raise ValueError(f"dynamic_lora_loading_path {uri!r}: unsupported scheme "
                         f"{scheme!r}; use a local folder, file:// or s3://")
    return uri


def default_cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV) or str(Path.home() / ".cache" / "llmserve")
    return Path(root) / "lora"


class LocalFolder:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.uri = str(path)

    def list_adapters(self) -> dict[str, str]:
        try:
            children = sorted(self.path.iterdir())
        except OSError as exc:
            raise AdapterFolderError(f"cannot list {self.path}: {exc}") from exc
        return {c.name: str(c) for c in children if (c / CONFIG_FILE).is_file()}

    def read_config(self, name: str) -> bytes:
        return (self.local_copy(name)[0] / CONFIG_FILE).read_bytes()

    def local_copy(self, name: str) -> tuple[Path, bool]:
        root = self.path.resolve()
        path = (self.path / name).resolve()
        if path.parent != root:  # a symlink leading out of the folder
            raise AdapterFolderError(f"adapter {name!r} resolves outside {self.path}")
        return path, False


class S3Folder:
    def __init__(self, uri: str, cache_dir: Path) -> None:
        self.uri = uri.rstrip("/")
        self.prefix = self.uri.removeprefix("s3://")
        digest = hashlib.sha256(self.uri.encode()).hexdigest()[:16]
        self.cache = cache_dir / digest

    def _fs(self) -> Any:
        import s3fs

        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        client_kwargs = {"endpoint_url": endpoint} if endpoint else {}
        return s3fs.S3FileSystem(client_kwargs=client_kwargs, use_listings_cache=False,
                                 skip_instance_cache=True)

    def list_adapters(self) -> dict[str, str]:
        try:
            found = self._fs().glob(f"{self.prefix}/*/{CONFIG_FILE}")
        except Exception as exc:  # botocore/aiohttp raise many kinds
            raise AdapterFolderError(f"cannot list {self.uri}: {exc!r}") from exc
        names = sorted(str(p).split("/")[-2] for p in found)
        return {name: f"{self.uri}/{name}" for name in names}

    def read_config(self, name: str) -> bytes:
        cached = self.cache / name / CONFIG_FILE
        if cached.is_file():
            return cached.read_bytes()
        try:
            return bytes(self._fs().cat_file(f"{self.prefix}/{name}/{CONFIG_FILE}"))
        except Exception as exc:
            raise AdapterFolderError(f"cannot read {self.uri}/{name}/{CONFIG_FILE}: "
                                     f"{exc!r}") from exc

    def local_copy(self, name: str) -> tuple[Path, bool]:
        final = self.cache / name
        if final.is_dir():
            return final, False
        self.cache.mkdir(parents=True, exist_ok=True)
        partial = self.cache / f".{name}.{uuid.uuid4().hex}.partial"
        try:
            self._fs().get(f"{self.prefix}/{name}/", str(partial) + "/", recursive=True)
            if not (partial / CONFIG_FILE).is_file():
                raise AdapterFolderError(f"{self.uri}/{name} has no {CONFIG_FILE}")
            try:
                partial.rename(final)
            except OSError:
                if not final.is_dir():  # not a rename another download won
                    raise
        except AdapterFolderError:
            raise
        except Exception as exc:
            raise AdapterFolderError(f"cannot download {self.uri}/{name}: {exc!r}") from exc
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return final, True
