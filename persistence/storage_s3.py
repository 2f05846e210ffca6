"""The S3 flavour of the object store (AWS S3, MinIO, or any S3-speaking server).

Uploads stream through multipart upload: at most one part is held in memory (``part_size`` bytes,
larger where an upload would otherwise need more than S3's 10,000 parts),
and a failed or over-size upload is aborted so no part lingers and nothing appears under the key.
Small uploads (below one part) use a single PUT, which S3 applies atomically. botocore retries
each request (503 SlowDown, resets before an answer); a download whose connection breaks while its
body streams goes on with a ranged GET of the same version from the byte it reached.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC
from typing import Any
from urllib.parse import quote

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as EndpointUnreachable
from urllib3.exceptions import HTTPError as Urllib3HTTPError

from persistence.storage import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_CONTENT_TYPE,
    BaseObjectStore,
    ByteSource,
    InvalidRange,
    ObjectInfo,
    ObjectNotFound,
    PartialUpload,
    SizeLimitedDigest,
    StoreConfigError,
    StoredObject,
    StoreError,
    StoreMisconfigured,
    StoreUnavailable,
    is_valid_key,
    iter_source,
    resolve_range,
    validate_key,
)

MIN_PART_SIZE = 5 * 1024 * 1024  # S3 rejects non-final multipart parts smaller than 5 MiB
DEFAULT_PART_SIZE = 8 * 1024 * 1024  # boto3's own default; 10 000 parts -> objects up to ~80 GB
MAX_PART_SIZE = 5 * 1024 ** 3  # S3's largest part
MAX_PARTS = 10_000  # S3 refuses part numbers above this
DELETE_BATCH = 1000  # DeleteObjects refuses more keys than this in one request

_NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound"}
#: S3 answers that pass by themselves (throttling, S3's own failures): an outage, which
#: callers may wait out (worker/store_writes.py), not a request S3 refused.
_PASSING_CODES = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout",
                  "Throttling", "ThrottlingException", "500", "502", "503", "504"}
_AUTH_CODES = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden"}
#: The setting at fault for the refusals that say which key was wrong (a HEAD's bare 403, and
#: AccessDenied, may be either key or the bucket's policy).
_AUTH_SETTINGS = {"InvalidAccessKeyId": "the server does not know S3_ACCESS_KEY",
                  "SignatureDoesNotMatch": "S3_SECRET_KEY is not the secret of S3_ACCESS_KEY"}


class S3ObjectStore(BaseObjectStore):
    """Objects in one S3 bucket, under their key.

    ``endpoint_url`` points at a non-AWS server (MinIO: ``http://minio:9000``) and switches to
    path-style addressing; None means AWS. Credentials left None come from boto3's usual chain
    (environment, instance role). ``public_endpoint_url`` is used only to sign presigned URLs, for
    when clients reach the server under another address than the service does.
    ``create_bucket=True`` creates the bucket at construction if it is missing (tests, demos);
    deployments create it beforehand.

    Timeouts are in seconds. :meth:`check` uses its own single-attempt client with a short connect
    timeout so that a readiness probe against a dead endpoint fails in about ``probe_timeout_s``.
    """

    def __init__(
        self,
        bucket: str,
        endpoint_url: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        region: str = "us-east-1",
        presign_expiry_s: int = 300,
        create_bucket: bool = False,
        *,
        public_endpoint_url: str | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 60.0,
        max_attempts: int = 3,
        probe_timeout_s: float = 2.0,
        max_parts: int = MAX_PARTS,
    ) -> None:
        if not bucket:
            raise StoreConfigError("s3_bucket is empty; name the bucket to store objects in")
        if part_size < MIN_PART_SIZE:
            raise StoreConfigError(f"part_size must be >= {MIN_PART_SIZE} bytes, got {part_size}")
        if presign_expiry_s <= 0:
            raise StoreConfigError(f"presign_expiry_s must be > 0, got {presign_expiry_s}")
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self.region = region
        self.presign_expiry_s = presign_expiry_s
        self.part_size = part_size
        self.max_parts = max_parts
        self.max_attempts = max_attempts
        # A private session: boto3's module-level default session is global state.
        session = boto3.session.Session(
            aws_access_key_id=access_key, aws_secret_access_key=secret_key, region_name=region
        )

        def make_client(url: str | None, timeout: float, read_timeout: float, attempts: int) -> Any:
            config = Config(
                signature_version="s3v4",
                connect_timeout=timeout,
                read_timeout=read_timeout,
                retries={"max_attempts": attempts, "mode": "standard"},
                # MinIO and most self-hosted servers do not resolve bucket subdomains.
                s3={"addressing_style": "path" if url else "auto"},
                # Newer botocore adds CRC checksums by default, which several S3-compatible
                # servers reject; the SHA-256 we compute ourselves is what the service relies on.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            )
            return session.client("s3", endpoint_url=url, region_name=region, config=config)

        self._client = make_client(endpoint_url, connect_timeout_s, read_timeout_s, max_attempts)
        self._probe = make_client(endpoint_url, probe_timeout_s, probe_timeout_s, 1)
        self._presigner = (
            make_client(public_endpoint_url, connect_timeout_s, read_timeout_s, 1)
            if public_endpoint_url
            else self._client
        )
        if create_bucket:
            self._ensure_bucket()

    def __repr__(self) -> str:
        return f"S3ObjectStore(bucket={self.bucket!r}, endpoint_url={self.endpoint_url!r})"

    # ---------------------------------------------------------------------------------------
    @property
    def _where(self) -> str:
        return f"bucket {self.bucket!r} at {self.endpoint_url or 'AWS S3'}"

    @contextmanager
    def _errors(self, key: str | None = None) -> Iterator[None]:
        """Translate boto errors into the store's typed errors, naming the key and bucket."""
        try:
            yield
        except ClientError as exc:
            code = _error_code(exc)
            if key is not None and code in _NOT_FOUND_CODES:
                raise ObjectNotFound(key) from exc
            if code == "NoSuchBucket" or code in _NOT_FOUND_CODES:
                raise StoreMisconfigured(
                    f"{self._where} does not exist; create it first") from exc
            if code in _AUTH_CODES:
                raise StoreMisconfigured(
                    f"access to {self._where} was denied ({code}); "
                    f"{_AUTH_SETTINGS.get(code, 'check S3_ACCESS_KEY and S3_SECRET_KEY')}"
                ) from exc
            message = exc.response.get("Error", {}).get("Message", "")
            if code in _PASSING_CODES:  # throttled or failing on S3's side past botocore's tries
                raise StoreUnavailable(
                    f"S3 request on {self._where} failed: {code} {message}") from exc
            raise StoreError(f"S3 request on {self._where} failed: {code} {message}") from exc
        except (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError) as exc:
            # Raised before anything is sent: no keys set and none in boto3's chain. It was
            # reported as "cannot use" (and "unreachable" at start), sending the operator to
            # the network; it is a setting to fix, so a starting process stops on it.
            raise StoreMisconfigured(
                f"no S3 credentials for {self._where} ({exc}); set S3_ACCESS_KEY and "
                "S3_SECRET_KEY (or AWS's own variables, profile or instance role)") from exc
        except EndpointUnreachable as exc:  # refused, timed out, closed: may pass by itself
            raise StoreUnavailable(
                f"cannot reach {self._where} ({exc}); if it lasts, check S3_ENDPOINT_URL"
            ) from exc
        except BotoCoreError as exc:
            raise StoreUnavailable(f"cannot use {self._where}: {exc}") from exc

    def _ensure_bucket(self) -> None:
        params: dict[str, Any] = {"Bucket": self.bucket}
        if self.region != "us-east-1":  # us-east-1 is the one region S3 refuses to be told about
            params["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        with self._errors():
            try:
                self._client.head_bucket(Bucket=self.bucket)
                return
            except ClientError as exc:
                if _error_code(exc) not in _NOT_FOUND_CODES | {"NoSuchBucket"}:
                    raise
            self._client.create_bucket(**params)

    # ---------------------------------------------------------------------------------------
    def put_stream(
        self,
        key: str,
        chunks: ByteSource,
        *,
        content_type: str = DEFAULT_CONTENT_TYPE,
        max_bytes: int | None = None,
    ) -> StoredObject:
        validate_key(key)
        digest = SizeLimitedDigest(max_bytes)
        buffer = bytearray()
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []

        def send_part(body: bytes) -> None:
            nonlocal upload_id
            with self._errors(key):
                if upload_id is None:
                    upload_id = self._client.create_multipart_upload(
                        Bucket=self.bucket, Key=key, ContentType=content_type
                    )["UploadId"]
                number = len(parts) + 1
                response = self._client.upload_part(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body
                )
            parts.append({"ETag": response["ETag"], "PartNumber": number})

        try:
            for chunk in iter_source(chunks):
                digest.update(chunk)
                buffer += chunk
                while len(buffer) >= (size := self._part_size(len(parts) + 1, max_bytes)):
                    send_part(bytes(buffer[:size]))
                    del buffer[:size]
            if upload_id is None:
                with self._errors(key):
                    self._client.put_object(
                        Bucket=self.bucket, Key=key, Body=bytes(buffer), ContentType=content_type
                    )
            else:
                if buffer:
                    send_part(bytes(buffer))
                with self._errors(key):
                    self._client.complete_multipart_upload(
                        Bucket=self.bucket,
                        Key=key,
                        UploadId=upload_id,
                        MultipartUpload={"Parts": parts},
                    )
        except BaseException:
            if upload_id is not None:
                self._abort(key, upload_id)
            raise
        return digest.stored(key, content_type)

    def _part_size(self, number: int, max_bytes: int | None) -> int:
        """The size of part ``number`` (from 1) such that no upload needs more than
        ``max_parts`` parts: ``max_bytes / max_parts`` when the caller gives the limit, else
        ``part_size`` doubled every eighth of ``max_parts`` parts (8 MiB parts cover 2.5 TB)."""
        if max_bytes is not None:
            size = max(self.part_size, -(-max_bytes // self.max_parts))
        else:
            size = self.part_size * 2 ** ((number - 1) // max(1, self.max_parts // 8))
        return min(size, MAX_PART_SIZE)

    def list_objects(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """The bucket's objects under ``prefix``, a page of 1,000 keys per request; keys the store
        would refuse (console folder markers such as ``checkpoints/``) are skipped."""
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix)
        with self._errors():
            for page in pages:
                for item in page.get("Contents", []):
                    if is_valid_key(item["Key"]):
                        # botocore gives the server's time in the local zone; the contract is UTC.
                        yield ObjectInfo(item["Key"], int(item["Size"]),
                                         item["LastModified"].astimezone(UTC))

    def list_partial_uploads(self) -> Iterator[PartialUpload]:
        """Multipart uploads never completed nor aborted (ListMultipartUploads): their parts
        are billed storage that no key shows until they are aborted."""
        pages = self._client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket)
        with self._errors():
            for page in pages:
                for item in page.get("Uploads", []):
                    yield PartialUpload(item["Key"], item["UploadId"],
                                        item["Initiated"].astimezone(UTC))

    def abort_partial_upload(self, upload: PartialUpload) -> None:
        with self._errors(upload.key):
            try:
                self._client.abort_multipart_upload(
                    Bucket=self.bucket, Key=upload.key, UploadId=upload.handle)
            except ClientError as exc:
                if _error_code(exc) != "NoSuchUpload":
                    raise

    def _abort(self, key: str, upload_id: str) -> None:
        """Abort a multipart upload to free its parts; best effort (the error in flight wins)."""
        # If this fails too, a bucket lifecycle rule for incomplete uploads is the backstop.
        with suppress(BotoCoreError, ClientError):
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)

    def iter_range(
        self, key: str, start: int = 0, end: int | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> Iterator[bytes]:
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be > 0, got {chunk_size}")
        validate_key(key)
        with self._errors(key):
            head = self._client.head_object(Bucket=self.bucket, Key=key)
        size = int(head["ContentLength"])
        first, stop = resolve_range(key, start, end, size)
        if first == stop:
            return iter(())
        body = self._open_range(key, head["ETag"], first, stop, size)
        return self._iter_body(key, head["ETag"], body, first, stop, size, chunk_size)

    def _open_range(self, key: str, etag: str, first: int, stop: int, size: int) -> Any:
        """The body of a GET of bytes ``[first, stop)`` of the version whose ETag is ``etag``."""
        with self._errors(key):
            try:
                response = self._client.get_object(
                    Bucket=self.bucket,
                    Key=key,
                    Range=f"bytes={first}-{stop - 1}",  # HTTP ranges are inclusive
                    # The version measured by the HEAD, not one a writer put there meanwhile.
                    IfMatch=etag,
                )
            except ClientError as exc:
                code = _error_code(exc)
                if code == "InvalidRange":
                    raise InvalidRange(key, first, stop, size) from exc
                if code in {"PreconditionFailed", "412"}:
                    raise StoreError(f"object {key!r} changed while being read; retry") from exc
                raise
        # A server or cache that drops Range answers the whole object (200, or 206 of other
        # bytes): served as this range, or spliced into a resumed download, it would be wrong.
        answered = response.get("ContentRange")
        if answered != f"bytes {first}-{stop - 1}/{size}":
            response["Body"].close()
            raise StoreError(
                f"{self._where} answered {answered or 'the whole object'} to a request for "
                f"{first}-{stop - 1} of {key!r}; a proxy in front of S3 may drop Range headers")
        return response["Body"]

    def _iter_body(self, key: str, etag: str, body: Any, first: int, stop: int, size: int,
                   chunk_size: int) -> Iterator[bytes]:
        """Yield the body's bytes; when the connection breaks mid-way (a reset, a read timeout, a
        body short of its Content-Length), ask for the rest of the same version, up to
        ``max_attempts`` breaks in a row. botocore retries requests, never a body being read,
        and a multi-gigabyte checkpoint streamed for minutes meets such a break now and then."""
        position, breaks = first, 0
        try:
            while True:
                try:
                    for chunk in body.iter_chunks(chunk_size):
                        position += len(chunk)
                        breaks = 0
                        yield chunk
                    return
                except (BotoCoreError, Urllib3HTTPError, ConnectionError) as exc:
                    breaks += 1
                    body.close()
                    if breaks >= self.max_attempts:
                        raise StoreUnavailable(
                            f"download of {key!r} from {self._where} broke {breaks} times in a "
                            f"row, the last at byte {position}: {exc}"
                        ) from exc
                    if position >= stop:
                        return  # every byte arrived; only the end of the stream was lost
                    body = self._open_range(key, etag, position, stop, size)
        finally:
            body.close()

    def size(self, key: str) -> int:
        validate_key(key)
        with self._errors(key):
            return int(self._client.head_object(Bucket=self.bucket, Key=key)["ContentLength"])

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except ObjectNotFound:
            return False
        return True

    def delete(self, key: str) -> None:
        validate_key(key)
        with self._errors(key):
            self._client.delete_object(Bucket=self.bucket, Key=key)

    def delete_many(self, keys: Iterable[str]) -> dict[str, str]:
        """DeleteObjects, 1,000 keys per request (S3's limit): a project's thousands of objects
        go in a few round trips instead of one DELETE each. A key S3 refuses, or a request that
        fails after botocore's retries, is reported, not raised, so the rest still go."""
        batch = [validate_key(key) for key in dict.fromkeys(keys)]
        failed: dict[str, str] = {}
        for start in range(0, len(batch), DELETE_BATCH):
            chunk = batch[start:start + DELETE_BATCH]
            try:
                with self._errors():
                    response = self._client.delete_objects(
                        Bucket=self.bucket,
                        Delete={"Objects": [{"Key": key} for key in chunk], "Quiet": True})
            except StoreError as exc:
                failed.update(dict.fromkeys(chunk, exc.message))
                continue
            for error in response.get("Errors", []):
                failed[error["Key"]] = f"{error.get('Code', '')} {error.get('Message', '')}"
        return failed

    def presigned_url(self, key: str, *, filename: str | None = None) -> str | None:
        """A GET URL valid for ``presign_expiry_s`` seconds; signing needs no network round trip.

        ``filename`` makes the server answer with ``Content-Disposition: attachment`` under that
        name. The URL is made whether or not the object exists (the caller knows it does).
        """
        validate_key(key)
        params: dict[str, str] = {"Bucket": self.bucket, "Key": key}
        if filename:
            params["ResponseContentDisposition"] = content_disposition(filename)
        with self._errors(key):
            url: str = self._presigner.generate_presigned_url(
                "get_object", Params=params, ExpiresIn=self.presign_expiry_s
            )
        return url

    def check(self) -> None:
        """HEAD the bucket with a single, short-timeout attempt."""
        with self._errors():
            self._probe.head_bucket(Bucket=self.bucket)


def _error_code(exc: ClientError) -> str:
    """The S3 error code of ``exc`` (``NoSuchKey``, ``404``, ...)."""
    return str(exc.response.get("Error", {}).get("Code", ""))


def content_disposition(filename: str) -> str:
    """``attachment`` header value for ``filename``: an ASCII fallback plus RFC 5987 UTF-8 form."""
    fallback = re.sub(r"[^A-Za-z0-9._ -]", "_", filename) or "download"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"
