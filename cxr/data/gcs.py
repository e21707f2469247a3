"""The few Google Cloud Storage operations the project needs, on the real google-cloud-storage client.

`STORAGE_EMULATOR_HOST` points the client at a local emulator (the tests do this); credentials come from the
environment (Workload Identity, GOOGLE_APPLICATION_CREDENTIALS) and are never read or printed here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cxr.errors import UserError


@dataclass(frozen=True)
class GcsPath:
    bucket: str
    prefix: str  # without leading or trailing slash; "" for the bucket root

    def child(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def __str__(self) -> str:
        return f"gs://{self.bucket}/{self.prefix}"


def is_gcs_uri(text: str) -> bool:
    return text.startswith("gs://")


def parse_gcs_uri(uri: str) -> GcsPath:
    """gs://bucket/some/prefix -> GcsPath("bucket", "some/prefix")."""
    if not is_gcs_uri(uri) or len(uri) <= len("gs://"):
        raise UserError(f"not a gs:// URI: {uri!r}")
    bucket, _, prefix = uri[len("gs://"):].partition("/")
    return GcsPath(bucket, prefix.strip("/"))


def _cloud_errors() -> tuple[type[Exception], ...]:
    from google.api_core.exceptions import GoogleAPIError
    from google.auth.exceptions import GoogleAuthError

    return GoogleAPIError, GoogleAuthError


CLOUD_ERRORS = _cloud_errors()


def one_line(error: Exception) -> UserError:
    """A Google Cloud error (missing credentials, a refused or missing bucket) as the one line a user reads."""
    from google.auth.exceptions import DefaultCredentialsError

    if isinstance(error, DefaultCredentialsError):
        return UserError("gs://: no Google Cloud credentials found; set GOOGLE_APPLICATION_CREDENTIALS, run "
                         "`gcloud auth application-default login`, or use Workload Identity on GKE")
    message = getattr(error, "message", None) or str(error)
    return UserError(f"gs://: {type(error).__name__}: {message.splitlines()[0] if message else ''}")


def client():
    """A storage client; against the emulator when STORAGE_EMULATOR_HOST is set."""
    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project="local-emulator", credentials=AnonymousCredentials())
    return storage.Client()


def list_blobs(path: GcsPath) -> Iterator:
    """Every blob under the prefix, as google-cloud-storage Blob objects."""
    prefix = f"{path.prefix}/" if path.prefix else None
    return client().list_blobs(path.bucket, prefix=prefix)


def exists(path: GcsPath, name: str) -> bool:
    return client().bucket(path.bucket).blob(path.child(name)).exists()


def upload_folder(files: list[Path], folder: Path, path: GcsPath, last: str | None = None, progress=None) -> int:
    """Upload `files` (under `folder`) to the prefix, named relative to `folder`; `last` (a relative path) goes up
    after all others, so its presence marks a complete upload. Returns the number of files."""
    bucket = client().bucket(path.bucket)
    files = sorted(files)
    files.sort(key=lambda p: p.relative_to(folder).as_posix() == last)
    for file in files:
        bucket.blob(path.child(file.relative_to(folder).as_posix())).upload_from_filename(str(file))
        if progress:
            progress.advance(file.stat().st_size)
    return len(files)


def download(path: GcsPath, name: str, target: Path) -> bool:
    """Copy the blob `name` under the prefix to `target`; False when there is no such blob."""
    from google.api_core.exceptions import NotFound

    try:
        client().bucket(path.bucket).blob(path.child(name)).download_to_filename(str(target))
    except NotFound:
        target.unlink(missing_ok=True)  # the client leaves an empty file behind
        return False
    return True
