"""The object store: the same tests run against the local folder and a real S3 server on loopback.

The S3 flavour talks HTTP to moto's standalone server (no boto3 mocking), so requests are signed,
sent, parsed and answered as they would be by MinIO or AWS.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, timedelta
from pathlib import Path

import httpx
import pytest

from persistence.storage import (
    InvalidKey,
    InvalidRange,
    LocalObjectStore,
    ObjectNotFound,
    ObjectStore,
    ObjectTooLarge,
    StoreConfigError,
    StoreError,
    StoreUnavailable,
    build_object_store,
)
from persistence.storage_s3 import MIN_PART_SIZE, S3ObjectStore
from tests.s3_fault_proxy import FaultProxy

MiB = 1024 * 1024


@pytest.fixture(scope="session")
def s3_endpoint(moto_s3_endpoint: str) -> str:
    """URL of the session's moto S3 server (tests/service_fixtures.py)."""
    return moto_s3_endpoint


def make_s3_store(endpoint: str, **kwargs: object) -> S3ObjectStore:
    """A store on a fresh bucket, with the smallest part size S3 allows so tests stay small."""
    options: dict[str, object] = {
        "endpoint_url": endpoint,
        "access_key": "testing",
        "secret_key": "testing",
        "create_bucket": True,
        "part_size": MIN_PART_SIZE,
    }
    options.update(kwargs)
    return S3ObjectStore(f"test-{uuid.uuid4().hex[:12]}", **options)  # type: ignore[arg-type]


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalObjectStore(tmp_path / "store")
    return make_s3_store(request.getfixturevalue("s3_endpoint"))


def random_bytes(n: int, seed: int = 0) -> bytes:
    # Deterministic and incompressible enough that an off-by-one in a range shows.
    return hashlib.shake_256(seed.to_bytes(8, "little")).digest(n)


def chunked(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


class CountingSource:
    """An iterable of chunks that records how many bytes the store pulled from it."""

    def __init__(self, data: bytes, chunk: int) -> None:
        self.data, self.chunk, self.consumed = data, chunk, 0

    def __iter__(self) -> Iterator[bytes]:
        for piece in chunked(self.data, self.chunk):
            self.consumed += len(piece)
            yield piece


def leftover_files(store: ObjectStore) -> list[Path]:
    """Files a local store holds under its root (temp files included)."""
    assert isinstance(store, LocalObjectStore)
    return sorted(p for p in store.root.rglob("*") if p.is_file())


# ------------------------------------------------------------------------------------------------
# Shared behaviour
# ------------------------------------------------------------------------------------------------
def test_round_trip_and_delete(store: ObjectStore) -> None:
    data = random_bytes(1000)
    stored = store.put_bytes("jobs/1/result.json", data, content_type="application/json")
    assert stored.key == "jobs/1/result.json"
    assert stored.size == len(data)
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert stored.content_type == "application/json"
    assert store.exists("jobs/1/result.json")
    assert store.size("jobs/1/result.json") == len(data)
    assert store.get_bytes("jobs/1/result.json") == data

    store.put_bytes("jobs/1/result.json", b"replaced")
    assert store.get_bytes("jobs/1/result.json") == b"replaced"

    store.delete("jobs/1/result.json")
    assert not store.exists("jobs/1/result.json")
    store.delete("jobs/1/result.json")  # deleting again is not an error


def test_empty_object(store: ObjectStore) -> None:
    stored = store.put_stream("empty.bin", iter([]))
    assert (stored.size, stored.sha256) == (0, hashlib.sha256(b"").hexdigest())
    assert store.exists("empty.bin")
    assert store.get_bytes("empty.bin") == b""
    assert list(store.iter_range("empty.bin")) == []


def test_put_stream_from_file_object_and_put_file(store: ObjectStore, tmp_path: Path) -> None:
    data = random_bytes(300_000, seed=1)
    from_fileobj = store.put_stream("a.bin", io.BytesIO(data))
    assert from_fileobj.sha256 == hashlib.sha256(data).hexdigest()

    source = tmp_path / "weights.safetensors"
    source.write_bytes(data)
    from_path = store.put_file("b.bin", source, content_type="application/octet-stream")
    assert (from_path.size, from_path.sha256) == (from_fileobj.size, from_fileobj.sha256)

    target = store.download_to("b.bin", tmp_path / "out" / "copy.bin")
    assert target.read_bytes() == data
    assert [p.name for p in target.parent.iterdir()] == ["copy.bin"]  # no temp file left


def test_large_stream_is_uploaded_in_parts(store: ObjectStore, tmp_path: Path) -> None:
    # > 2 parts of 5 MiB with a short last part; odd chunk sizes so parts straddle chunks.
    data = random_bytes(2 * MIN_PART_SIZE + 123_457, seed=2)
    stored = store.put_stream("checkpoints/big.pt", chunked(data, 700_001))
    assert stored.size == len(data)
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert store.size("checkpoints/big.pt") == len(data)
    digest = hashlib.sha256()
    for chunk in store.iter_range("checkpoints/big.pt", chunk_size=MiB):
        assert len(chunk) <= MiB
        digest.update(chunk)
    assert digest.hexdigest() == stored.sha256
    assert store.download_to("checkpoints/big.pt", tmp_path / "big.pt").read_bytes() == data


@pytest.mark.parametrize("total", [11, 2 * MIN_PART_SIZE + 1])  # the single-PUT and multipart paths
def test_over_limit_upload_raises_and_keeps_previous_object(store: ObjectStore, total: int) -> None:
    store.put_bytes("up.bin", b"previous version")
    limit = total - 1
    source = CountingSource(random_bytes(total, seed=3), chunk=MiB // 4 if total > 100 else 3)
    with pytest.raises(ObjectTooLarge) as info:
        store.put_stream("up.bin", source, max_bytes=limit)
    assert info.value.limit == limit
    assert str(limit) in str(info.value)
    assert store.get_bytes("up.bin") == b"previous version"

    with pytest.raises(ObjectTooLarge):
        store.put_stream(
            "new.bin", CountingSource(random_bytes(total, seed=3), chunk=7), max_bytes=limit
        )
    assert not store.exists("new.bin")
    if isinstance(store, LocalObjectStore):
        assert [p.name for p in leftover_files(store)] == ["up.bin"]


def test_upload_stops_reading_once_over_limit(store: ObjectStore) -> None:
    source = CountingSource(random_bytes(4 * MiB, seed=4), chunk=64 * 1024)
    with pytest.raises(ObjectTooLarge):
        store.put_stream("x.bin", source, max_bytes=MiB)
    # The store must not drain the client's whole upload before refusing it.
    assert source.consumed <= MiB + 64 * 1024


def test_exact_limit_is_accepted(store: ObjectStore) -> None:
    stored = store.put_stream("exact.bin", [b"abc", b"de"], max_bytes=5)
    assert stored.size == 5


def test_failing_source_leaves_nothing(store: ObjectStore) -> None:
    def broken() -> Iterator[bytes]:
        yield random_bytes(MIN_PART_SIZE + 10)  # far enough for a multipart upload to start
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        store.put_stream("broken.bin", broken())
    assert not store.exists("broken.bin")
    if isinstance(store, LocalObjectStore):
        assert leftover_files(store) == []


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (0, None, slice(0, 1000)),
        (0, 1, slice(0, 1)),
        (10, 20, slice(10, 20)),
        (999, None, slice(999, 1000)),
        (500, 5000, slice(500, 1000)),  # end past the object is clamped, as HTTP does
        (1000, None, slice(1000, 1000)),  # at the end: empty
        (7, 7, slice(7, 7)),
    ],
)
def test_ranges(store: ObjectStore, start: int, end: int | None, expected: slice) -> None:
    data = random_bytes(1000, seed=5)
    store.put_bytes("r.bin", data)
    chunks = list(store.iter_range("r.bin", start, end, chunk_size=97))
    assert all(0 < len(c) <= 97 for c in chunks)
    assert b"".join(chunks) == data[expected]


@pytest.mark.parametrize(("start", "end"), [(1001, None), (-1, None), (20, 10)])
def test_invalid_ranges(store: ObjectStore, start: int, end: int | None) -> None:
    store.put_bytes("r.bin", random_bytes(1000))
    with pytest.raises(InvalidRange) as info:
        store.iter_range("r.bin", start, end)
    assert info.value.size == 1000


def test_missing_key(store: ObjectStore, tmp_path: Path) -> None:
    assert not store.exists("nope/missing.bin")
    for call in (
        lambda: store.get_bytes("nope/missing.bin"),
        lambda: store.size("nope/missing.bin"),
        lambda: store.iter_range("nope/missing.bin"),  # raises when called, not when iterated
        lambda: store.download_to("nope/missing.bin", tmp_path / "out.bin"),
    ):
        with pytest.raises(ObjectNotFound) as info:
            call()
        assert info.value.key == "nope/missing.bin"
    assert not (tmp_path / "out.bin").exists()
    store.delete("nope/missing.bin")


@pytest.mark.parametrize(
    "key",
    [
        "",
        "../escape.bin",
        "a/../../escape.bin",
        "/etc/passwd",
        "a//b",
        "a/./b",
        "a\\b",
        ".hidden",
        "a/.x.part",
        "nul\x00byte",
        "x" * 1025,
        "a/" + "x" * 201,  # a segment longer than any store can hold under one name
        "a/" + "é" * 101,  # 202 bytes of UTF-8
    ],
)
def test_invalid_keys_are_rejected(store: ObjectStore, key: str) -> None:
    with pytest.raises(InvalidKey):
        store.put_bytes(key, b"data")
    with pytest.raises(InvalidKey):
        store.get_bytes(key)
    with pytest.raises(InvalidKey):
        store.exists(key)


def test_the_longest_segment_is_stored_by_every_store(store: ObjectStore) -> None:
    """A key one store accepts, every store accepts: the local store used to answer a segment
    S3 takes with 503 'cannot be written (File name too long); check STORE_ROOT'."""
    key = "a/" + "ü" * 100  # 200 bytes: the local store's temp name adds ~15 to it
    store.put_bytes(key, b"long")
    assert store.get_bytes(key) == b"long"
    assert [item.key for item in store.list_objects("a/")] == [key]


def test_presigned_url(store: ObjectStore) -> None:
    data = random_bytes(5000, seed=6)
    store.put_bytes("jobs/7/tuned.safetensors", data)
    url = store.presigned_url("jobs/7/tuned.safetensors", filename="tuned ü.safetensors")
    if isinstance(store, LocalObjectStore):
        assert url is None
        return
    assert url is not None
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200
    assert response.content == data
    disposition = response.headers["content-disposition"]
    assert disposition.startswith("attachment;")
    assert "filename*=UTF-8''tuned%20%C3%BC.safetensors" in disposition


def test_check_passes_on_a_usable_store(store: ObjectStore) -> None:
    store.check()


# ------------------------------------------------------------------------------------------------
# Flavour-specific behaviour
# ------------------------------------------------------------------------------------------------
def test_local_rejects_symlink_out_of_root(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"secret")
    store = LocalObjectStore(tmp_path / "store")
    store.root.mkdir()
    os.symlink(outside, store.root / "link")
    with pytest.raises(InvalidKey):
        store.get_bytes("link/secret.txt")
    with pytest.raises(InvalidKey):
        store.put_bytes("link/new.txt", b"x")
    assert not (outside / "new.txt").exists()


def test_local_check_fails_when_root_is_not_a_folder(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(StoreUnavailable, match="not a writable folder"):
        LocalObjectStore(tmp_path / "file" / "store").check()


def test_local_write_when_root_is_not_a_folder_is_unavailable_not_a_bad_key(
        tmp_path: Path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    with pytest.raises(StoreUnavailable, match="check STORE_ROOT"):
        LocalObjectStore(blocked / "objects").put_bytes("checkpoints/x.bin", b"123")


def test_local_store_damage_is_unavailable_not_a_server_error(tmp_path: Path) -> None:
    """A symlink loop where an object should be, or a socket file in its place, is the store's
    state (503 store_unavailable naming STORE_ROOT), not a RuntimeError/OSError (500)."""
    import socket

    store = LocalObjectStore(tmp_path / "objects")
    store.put_bytes("jobs/a/loop.bin", b"x")
    loop = tmp_path / "objects" / "jobs" / "a" / "loop.bin"
    loop.unlink()
    loop.symlink_to(loop.name)
    for read in (store.size, store.get_bytes, store.delete, store.exists,
                 lambda key: list(store.iter_range(key))):
        with pytest.raises(StoreUnavailable, match="check STORE_ROOT"):
            read("jobs/a/loop.bin")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(tmp_path / "objects" / "jobs" / "a" / "sock.bin"))
        with pytest.raises(StoreUnavailable, match="cannot be read"):
            list(store.iter_range("jobs/a/sock.bin"))


def test_local_write_on_a_full_disk_is_unavailable(tmp_path: Path) -> None:
    """A file-size limit (RLIMIT_FSIZE, in a child process) fails the write as a full disk does,
    with an OSError from the kernel: the store says it is unavailable and leaves no part file."""
    import subprocess
    import sys

    code = (
        "import resource, signal, sys\n"
        "from persistence.storage import LocalObjectStore, StoreUnavailable\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
        f"store = LocalObjectStore({str(tmp_path / 'objects')!r})\n"
        "try:\n"
        "    store.put_bytes('checkpoints/big.bin', b'x' * 100_000)\n"
        "except StoreUnavailable as exc:\n"
        "    print(exc)\n"
        "    sys.exit(3)\n"
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "PYTHONPATH": str(root)})
    assert result.returncode == 3, result.stderr
    assert "cannot be written (File too large); check STORE_ROOT" in result.stdout
    assert list((tmp_path / "objects").rglob("*.part")) == []


def test_s3_multipart_upload_is_used_and_content_type_kept(s3_endpoint: str) -> None:
    store = make_s3_store(s3_endpoint)
    data = random_bytes(2 * MIN_PART_SIZE + 1, seed=7)
    store.put_stream("m.bin", chunked(data, MiB), content_type="application/x-test")
    head = store._client.head_object(Bucket=store.bucket, Key="m.bin")
    assert head["ETag"].strip('"').endswith("-3")  # a multipart ETag names its part count
    assert head["ContentType"] == "application/x-test"


def test_s3_aborted_uploads_leave_no_parts(s3_endpoint: str) -> None:
    store = make_s3_store(s3_endpoint)
    with pytest.raises(ObjectTooLarge):
        store.put_stream(
            "big.bin", chunked(random_bytes(3 * MIN_PART_SIZE), MiB), max_bytes=2 * MIN_PART_SIZE
        )
    uploads = store._client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])
    assert uploads == []
    assert store._client.list_objects_v2(Bucket=store.bucket).get("KeyCount") == 0


def test_s3_check_on_unreachable_endpoint_fails_fast() -> None:
    with socket.socket() as sock:  # a port nobody listens on: bound, never accepting
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        store = S3ObjectStore(
            "bucket", endpoint_url=f"http://127.0.0.1:{port}", access_key="a", secret_key="b"
        )
        began = time.monotonic()
        with pytest.raises(StoreUnavailable) as info:
            store.check()
    assert time.monotonic() - began < 5
    assert f"127.0.0.1:{port}" in str(info.value)


def test_s3_check_on_missing_bucket_names_it(s3_endpoint: str) -> None:
    store = S3ObjectStore(
        "no-such-bucket-here", endpoint_url=s3_endpoint, access_key="a", secret_key="b"
    )
    with pytest.raises(StoreUnavailable, match="no-such-bucket-here"):
        store.check()


def test_build_object_store(tmp_path: Path, s3_endpoint: str) -> None:
    local = build_object_store("local", local_root=tmp_path)
    assert isinstance(local, LocalObjectStore)
    s3 = build_object_store(
        "s3",
        s3_bucket="built",
        s3_endpoint_url=s3_endpoint,
        s3_access_key="testing",
        s3_secret_key="testing",
        s3_region="us-east-1",
        s3_create_bucket=True,
    )
    assert isinstance(s3, S3ObjectStore)
    s3.check()
    with pytest.raises(StoreConfigError, match="s3_bucket"):
        build_object_store("s3", s3_bucket=None)
    with pytest.raises(StoreConfigError, match="local_root"):
        build_object_store("local")


# ------------------------------------------------------------------------------------------------
# Transient S3 faults (a proxy in front of moto drops connections or answers 503 SlowDown)
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def fault_proxy(s3_endpoint: str) -> Iterator[FaultProxy]:
    with FaultProxy(s3_endpoint) as proxy:
        yield proxy


def test_s3_download_resumes_after_the_connection_drops(fault_proxy: FaultProxy,
                                                        tmp_path: Path) -> None:
    """A long download from S3 meets a connection reset now and then; the reader asks for the
    rest of the same version (a ranged GET from the byte reached) instead of failing the job."""
    store = make_s3_store(fault_proxy.url)
    data = random_bytes(300_000, seed=3)
    store.put_bytes("ckpt.bin", data)
    fault_proxy.fail("GET", times=2, cut_after=70_000)
    assert b"".join(store.iter_range("ckpt.bin", 10, None, chunk_size=8192)) == data[10:]
    fault_proxy.fail("GET", times=1, cut_after=1)
    target = store.download_to("ckpt.bin", tmp_path / "ckpt.bin")
    assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(data).digest()


def test_s3_download_that_keeps_breaking_fails_clearly_and_leaves_no_file(
        fault_proxy: FaultProxy, tmp_path: Path) -> None:
    """Breaks that bring no byte forward end the download after ``max_attempts`` GETs."""
    store = make_s3_store(fault_proxy.url, max_attempts=2)
    store.put_bytes("ckpt.bin", random_bytes(100_000))
    fault_proxy.fail("GET", times=100, cut_after=0)
    with pytest.raises(StoreUnavailable, match=r"download of 'ckpt.bin'.*broke 2 times"):
        store.download_to("ckpt.bin", tmp_path / "out" / "ckpt.bin")
    assert list((tmp_path / "out").iterdir()) == []


def test_s3_resumed_download_refuses_a_replaced_object(fault_proxy: FaultProxy) -> None:
    """The rest of a download comes from the version it started on, never from a new one."""
    store = make_s3_store(fault_proxy.url)
    store.put_bytes("a.bin", random_bytes(50_000, seed=1))
    fault_proxy.fail("GET", times=1, cut_after=5_000)
    chunks = store.iter_range("a.bin", chunk_size=1000)
    first = next(chunks)
    store.put_bytes("a.bin", random_bytes(50_000, seed=2))
    with pytest.raises(StoreError, match="changed while being read"):
        b"".join([first, *chunks])


def test_s3_slow_down_during_a_multipart_upload_is_retried(fault_proxy: FaultProxy) -> None:
    store = make_s3_store(fault_proxy.url)
    data = random_bytes(2 * MIN_PART_SIZE + 5, seed=4)
    fault_proxy.fail("PUT", times=2, query="partNumber")
    stored = store.put_stream("big.bin", chunked(data, MiB))
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert store.get_bytes("big.bin") == data


def test_s3_upload_that_cannot_complete_leaves_neither_object_nor_parts(
        fault_proxy: FaultProxy) -> None:
    store = make_s3_store(fault_proxy.url)
    store.put_bytes("big.bin", b"previous")
    fault_proxy.fail("POST", times=100, query="uploadId")  # CompleteMultipartUpload: 503 always
    with pytest.raises(StoreError, match="SlowDown"):
        store.put_stream("big.bin", chunked(random_bytes(MIN_PART_SIZE + 1), MiB))
    assert store.get_bytes("big.bin") == b"previous"
    assert store._client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", []) == []


def test_listings_show_only_keys_the_store_accepts(store: ObjectStore) -> None:
    """Whatever else lies in the bucket or folder (console 'folder' markers, names with an empty
    segment or a backslash), a listing yields only keys every other call accepts, so a caller
    deleting what it lists never meets InvalidKey."""
    store.put_bytes("p/ok.bin", b"x")
    if isinstance(store, LocalObjectStore):
        (store.root / "p" / "back\\slash").write_bytes(b"")
    else:
        assert isinstance(store, S3ObjectStore)
        for odd in ("p/", "p//empty-segment", "p/.hidden"):
            store._client.put_object(Bucket=store.bucket, Key=odd, Body=b"")
    listed = [item.key for item in store.list_objects("p/")]
    assert listed == ["p/ok.bin"]
    for key in listed:
        store.delete(key)


def test_listing_times_are_utc(store: ObjectStore) -> None:
    store.put_bytes("t.bin", b"x")
    (item,) = store.list_objects("t")
    assert item.modified.utcoffset() == timedelta(0) and item.modified.tzinfo == UTC


# ------------------------------------------------------------------------------------------------
# Deleting many objects (a project, a job, the janitor's sweep)
# ------------------------------------------------------------------------------------------------
def test_delete_many_removes_every_key_and_ignores_missing_ones(store: ObjectStore) -> None:
    keys = [f"jobs/j/mrc/attempt-1/{i:04d}.json" for i in range(1005)]
    for key in keys:
        store.put_bytes(key, b"")
    store.put_bytes("jobs/other/kept.json", b"k")
    assert store.delete_many([*keys, "jobs/j/never-written.json"]) == {}
    assert [item.key for item in store.list_objects("jobs/")] == ["jobs/other/kept.json"]
    assert store.delete_many([]) == {}
    with pytest.raises(InvalidKey):
        store.delete_many(["jobs/other/kept.json", "../outside"])
    assert store.exists("jobs/other/kept.json")  # nothing is deleted when one key is invalid


def test_deleting_a_project_sized_set_of_s3_objects_takes_a_request_per_thousand(
        fault_proxy: FaultProxy, s3_endpoint: str) -> None:
    """A project or a retention sweep removes thousands of objects; one DELETE each made that
    minutes of round trips inside an HTTP request. DeleteObjects takes up to 1,000 keys."""
    from persistence.deletion import delete_objects

    store = make_s3_store(fault_proxy.url)
    direct = make_s3_store(s3_endpoint)._client  # set-up bypasses the proxy's counters
    keys = [f"checkpoints/{i:05d}.safetensors" for i in range(1001)]
    for key in keys:
        direct.put_object(Bucket=store.bucket, Key=key, Body=b"")
    assert delete_objects(store, keys) == len(keys)
    assert fault_proxy.requests.get("DELETE", 0) == 0
    assert fault_proxy.requests["POST"] == 2
    assert list(store.list_objects("checkpoints/")) == []


def test_s3_delete_many_reports_the_keys_it_could_not_delete(fault_proxy: FaultProxy) -> None:
    store = make_s3_store(fault_proxy.url)
    store.put_bytes("a.bin", b"a")
    fault_proxy.fail("POST", times=100, query="delete")
    failed = store.delete_many(["a.bin"])
    assert list(failed) == ["a.bin"] and "SlowDown" in failed["a.bin"]
    assert store.exists("a.bin")


# ------------------------------------------------------------------------------------------------
# Part sizes: S3 refuses a multipart upload of more than 10,000 parts
# ------------------------------------------------------------------------------------------------
def _part_count(store: S3ObjectStore, key: str) -> int:
    etag = store._client.head_object(Bucket=store.bucket, Key=key)["ETag"].strip('"')
    return int(etag.rsplit("-", 1)[1]) if "-" in etag else 1


@pytest.mark.parametrize("max_bytes", [3 * MIN_PART_SIZE, None])
def test_s3_upload_never_needs_more_parts_than_s3_allows(s3_endpoint: str,
                                                         max_bytes: int | None) -> None:
    """With a fixed part size, an upload past part_size x 10,000 bytes (80 GB by default; a
    raised MAX_DATASET_BYTES allows it) failed at part 10,001 after sending everything before.
    Parts grow instead: to fit ``max_bytes`` when the caller gives it, else by doubling."""
    store = make_s3_store(s3_endpoint, max_parts=2)
    data = random_bytes(3 * MIN_PART_SIZE - 7, seed=9)
    stored = store.put_stream("big.bin", chunked(data, MiB), max_bytes=max_bytes)
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert _part_count(store, "big.bin") <= 2
    assert store.get_bytes("big.bin") == data


def test_partial_upload_times_are_utc(store: ObjectStore) -> None:
    if isinstance(store, LocalObjectStore):
        (store.root / "u").mkdir(parents=True)
        (store.root / "u" / ".big.bin.abc123.part").write_bytes(b"x")
    else:
        assert isinstance(store, S3ObjectStore)
        store._client.create_multipart_upload(Bucket=store.bucket, Key="u/big.bin")
    (upload,) = store.list_partial_uploads()
    assert upload.key == "u/big.bin" and upload.started.tzinfo == UTC


def test_s3_answer_that_ignored_the_range_is_refused_not_served(fault_proxy: FaultProxy) -> None:
    """A server or cache in front of S3 that drops ``Range`` answers the whole object: served
    as the range (or spliced into a resumed download) it would hand out the wrong bytes."""
    store = make_s3_store(fault_proxy.url)
    data = random_bytes(20_000, seed=5)
    store.put_bytes("a.bin", data)
    fault_proxy.fail("GET", times=1, ignore_range=True)
    with pytest.raises(StoreError, match="answered bytes 0-19999/20000 to a request for 100-199"):
        b"".join(store.iter_range("a.bin", 100, 200))
    fault_proxy.fail("GET", times=1, cut_after=5_000)
    fault_proxy.fail("GET", times=1, ignore_range=True)  # the resumed GET
    with pytest.raises(StoreError, match="to a request for 5000-19999"):
        b"".join(store.iter_range("a.bin"))
