"""Conformance suite for rmrun.store, run against every backend (local, memory://, s3 via moto)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import posixpath
import signal
import subprocess
import sys
import threading
import uuid

import fsspec
import pytest

from rmrun.store import (
    CommittedState,
    CorruptState,
    Lease,
    LeaseLost,
    NewerFormat,
    NoValidState,
    StateStore,
    StoreError,
)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# --------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture(params=["local", "memory", "s3"])
def store_root(request, tmp_path):
    """A fresh, empty store root on each backend."""
    if request.param == "local":
        yield str(tmp_path / "store")
    elif request.param == "memory":
        root = f"memory://rmrun-test-{uuid.uuid4().hex[:12]}"
        yield root
        fs, path = fsspec.core.url_to_fs(root)
        if fs.exists(path):
            fs.rm(path, recursive=True)
    else:
        yield request.getfixturevalue("s3_root")("store")


def is_local(root: str) -> bool:
    return "://" not in root


def new_runner(root: str, holder: str) -> tuple[StateStore, Lease]:
    """A StateStore with a freshly acquired lease, as a (re)started job would have."""
    store = StateStore(root)
    return store, store.acquire_lease(holder=holder)


def commit_state(store: StateStore, lease: Lease, key: str, files: dict[str, bytes], **meta) -> CommittedState:
    """Stage ``files`` under ``key`` and commit."""
    staged = store.stage(key, lease=lease, meta=meta)
    for name, data in files.items():
        staged.write_bytes(name, data)
    return staged.commit()


def overwrite(url: str, data: bytes) -> None:
    """Replace an object behind the store's back (simulated corruption)."""
    fs, path = fsspec.core.url_to_fs(url)
    fs.pipe_file(path, data)


def remove(url: str, *, recursive: bool = False) -> None:
    """Remove an object or folder behind the store's back."""
    fs, path = fsspec.core.url_to_fs(url)
    fs.rm(path, recursive=recursive)


def read_url(url: str) -> bytes:
    """Raw bytes of an object, read behind the store's back."""
    with fsspec.open(url, "rb") as f:
        return f.read()


def has_files(url: str) -> bool:
    """True if any file exists at or under ``url``."""
    fs, path = fsspec.core.url_to_fs(url)
    fs.invalidate_cache()
    return bool(fs.find(path))


def file_url(state: CommittedState, store: StateStore, name: str) -> str:
    return store.url("states", state.key, state.attempt, name)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- round trip and manifest


def test_round_trip_bytes_files_and_dirs(store_root, tmp_path):
    store, lease = new_runner(store_root, "job")
    big = os.urandom(3 * 2**20 + 17)
    local_file = tmp_path / "weights.bin"
    local_file.write_bytes(big)
    src = tmp_path / "src"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "config.json").write_text('{"a": 1}')
    (src / "sub" / "tok.txt").write_text("hello")
    (src / "sub" / "deeper" / "empty").write_bytes(b"")

    staged = store.stage("ckpt-000001", lease=lease, meta={"step": 1})
    staged.write_bytes("nested/dir/blob.bin", b"\x00\x01payload")
    staged.put_file("weights.bin", str(local_file))
    staged.put_dir(str(src), prefix="model")
    committed = staged.commit()

    state = store.open_verified("ckpt-000001")
    assert state is not None and state.attempt == committed.attempt
    assert state.files == sorted(
        ["nested/dir/blob.bin", "weights.bin", "model/config.json", "model/sub/tok.txt", "model/sub/deeper/empty"]
    )
    assert state.read_bytes("nested/dir/blob.bin") == b"\x00\x01payload"
    assert state.read_bytes("weights.bin") == big
    state.get_file("weights.bin", str(tmp_path / "out" / "w.bin"))
    assert (tmp_path / "out" / "w.bin").read_bytes() == big

    state.get_dir(str(tmp_path / "model_out"), prefix="model")
    assert (tmp_path / "model_out" / "config.json").read_text() == '{"a": 1}'
    assert (tmp_path / "model_out" / "sub" / "tok.txt").read_text() == "hello"
    assert (tmp_path / "model_out" / "sub" / "deeper" / "empty").read_bytes() == b""
    assert not (tmp_path / "model_out" / "weights.bin").exists()

    state.get_dir(str(tmp_path / "all_out"))
    assert (tmp_path / "all_out" / "nested" / "dir" / "blob.bin").read_bytes() == b"\x00\x01payload"
    assert (tmp_path / "all_out" / "model" / "sub" / "tok.txt").read_text() == "hello"
    with pytest.raises(StoreError, match="no file"):
        state.read_bytes("absent")
    state.verify()


def test_manifest_contents(store_root):
    store, lease = new_runner(store_root, "host-a:123")
    meta = {"step": 7, "loss": 0.25, "tags": ["x"]}
    staged = store.stage("step-000007", lease=lease, meta=meta)
    meta["step"] = 999  # the store keeps its own copy
    staged.write_bytes("a.bin", b"aaaa")
    staged.write_bytes("sub/b.bin", b"bb")
    committed = staged.commit()

    manifest = store.open_verified("step-000007").manifest
    assert manifest == committed.manifest
    assert manifest["format"] == 1
    assert manifest["key"] == "step-000007"
    assert manifest["meta"] == {"step": 7, "loss": 0.25, "tags": ["x"]}
    assert manifest["generation"] == lease.generation == 1
    assert manifest["run_id"] == lease.run_id
    assert manifest["time"]
    assert manifest["attempt"] == committed.attempt
    assert committed.attempt.startswith(f"g{lease.generation:06d}-{lease.run_id}-")
    assert manifest["files"] == [
        {"path": "a.bin", "size": 4, "sha256": sha(b"aaaa")},
        {"path": "sub/b.bin", "size": 2, "sha256": sha(b"bb")},
    ]
    raw_manifest = read_url(store.url("states", "step-000007", committed.attempt, "MANIFEST.json"))
    assert json.loads(raw_manifest) == manifest
    commit_record = json.loads(read_url(store.url("states", "step-000007", "COMMIT")))
    assert commit_record["attempt"] == committed.attempt
    assert commit_record["manifest_sha256"] == sha(raw_manifest)


def test_attempt_names_are_never_reused(store_root):
    store, lease = new_runner(store_root, "job")
    attempts = {store.stage(f"k-{i}", lease=lease, meta={}).attempt for i in range(8)}
    attempts |= {store.stage("k-0", lease=lease, meta={}).attempt for _ in range(8)}
    assert len(attempts) == 16


# --------------------------------------------------------------------------- crashes and partial deletes


def test_killed_writer_leaves_nothing_visible_and_is_cleaned(store_root):
    dead, dead_lease = new_runner(store_root, "dead")
    staged = dead.stage("ckpt-000002", lease=dead_lease, meta={})
    staged.write_bytes("part-0", b"first")
    staged.write_bytes("part-1", b"second")
    del staged  # killed before commit
    dead.release(dead_lease)

    store, lease = new_runner(store_root, "restarted")
    assert store.open_verified("ckpt-000002") is None
    assert store.latest("ckpt-") is None
    assert store.committed_keys("ckpt-") == []

    in_progress = store.stage("ckpt-000003", lease=lease, meta={})
    in_progress.write_bytes("part-0", b"mine")
    assert store.clean_staging(lease=lease) == 1  # only the dead writer's attempt
    assert not has_files(store.url("states", "ckpt-000002"))
    assert in_progress.commit().read_bytes("part-0") == b"mine"
    assert store.clean_staging(lease=lease) == 0
    assert store.committed_keys("ckpt-") == ["ckpt-000003"]


def test_half_deleted_states_are_never_chosen(store_root):
    store, lease = new_runner(store_root, "job")
    commit_state(store, lease, "ckpt-000001", {"w": b"one"})
    second = commit_state(store, lease, "ckpt-000002", {"w": b"two"})
    third = commit_state(store, lease, "ckpt-000003", {"w": b"three", "x": b"extra"})

    # COMMIT removed, data left (delete interrupted): invisible, and garbage for
    # clean_staging once the job restarts with a new lease.
    remove(store.url("states", "ckpt-000003", "COMMIT"))
    assert store.latest("ckpt-").key == "ckpt-000002"
    assert store.open_verified("ckpt-000003") is None
    assert store.committed_keys("ckpt-") == ["ckpt-000001", "ckpt-000002"]
    assert store.clean_staging(lease=lease) == 0  # could still be this lease's staging
    store.release(lease)
    store, lease = new_runner(store_root, "restarted")
    assert store.clean_staging(lease=lease) == 1
    assert not has_files(store.url("states", "ckpt-000003", third.attempt))

    # COMMIT left, data removed: fails verification, quarantined, previous state used.
    remove(store.url("states", "ckpt-000002", second.attempt), recursive=True)
    state = store.latest("ckpt-")
    assert state.key == "ckpt-000001" and state.read_bytes("w") == b"one"
    notes = store.quarantined()
    assert [(n["key"], n["attempt"]) for n in notes] == [("ckpt-000002", second.attempt)]
    assert "MANIFEST" in notes[0]["reason"]
    assert store.committed_keys("ckpt-") == ["ckpt-000001"]


def test_file_missing_from_committed_state_is_detected(store_root):
    store, lease = new_runner(store_root, "job")
    commit_state(store, lease, "s-1", {"a": b"1"})
    bad = commit_state(store, lease, "s-2", {"a": b"2", "b": b"22"})
    remove(file_url(bad, store, "b"))
    assert store.latest("s-").key == "s-1"
    assert "missing file b" in store.quarantined()[0]["reason"]


@pytest.mark.parametrize(
    "corrupt, reason",
    [
        (lambda data: data[:-1], "size mismatch"),
        (lambda data: data[:5] + bytes([data[5] ^ 0x01]) + data[6:], "sha256 mismatch"),
    ],
    ids=["truncated", "flipped-byte"],
)
def test_corrupt_file_is_quarantined_and_skipped(store_root, tmp_path, corrupt, reason):
    store, lease = new_runner(store_root, "job")
    payload = os.urandom(4096)
    commit_state(store, lease, "ckpt-000001", {"model.bin": payload, "opt.bin": b"o1"})
    bad = commit_state(store, lease, "ckpt-000002", {"model.bin": payload[::-1], "opt.bin": b"o2"})
    overwrite(file_url(bad, store, "model.bin"), corrupt(payload[::-1]))

    with pytest.raises(StoreError, match=reason):
        bad.verify()
    with pytest.raises(StoreError, match=reason):
        bad.get_file("model.bin", str(tmp_path / "model.bin"))
    assert not (tmp_path / "model.bin").exists()  # nothing half-downloaded is left behind

    state = store.latest("ckpt-")
    assert state.key == "ckpt-000001" and state.read_bytes("model.bin") == payload
    notes = store.quarantined()
    assert len(notes) == 1
    assert notes[0]["key"] == "ckpt-000002" and notes[0]["attempt"] == bad.attempt
    assert reason in notes[0]["reason"] and "model.bin" in notes[0]["reason"] and notes[0]["time"]
    assert store.open_verified("ckpt-000002") is None
    assert store.committed_keys("ckpt-") == ["ckpt-000001"]
    assert store.latest("ckpt-").key == "ckpt-000001"
    assert len(store.quarantined()) == 1


# --------------------------------------------------------------------------- choosing on sizes, hashing on the read


def test_choosing_on_sizes_reads_no_file_contents(store_root, monkeypatch):
    store, lease = new_runner(store_root, "job")
    commit_state(store, lease, "ckpt-000001", {"model.bin": os.urandom(2048), "opt.bin": b"o1"})

    def refuse(path):
        raise AssertionError(f"a file was opened: {path}")

    monkeypatch.setattr(store._backend, "open_read", refuse)
    monkeypatch.setattr(
        store._backend,
        "read",
        lambda path, _read=store._backend.read: (
            _read(path) if path.endswith(("COMMIT", "MANIFEST.json")) else refuse(path)
        ),
    )
    assert store.latest("ckpt-", hash_files=False).key == "ckpt-000001"
    assert store.open_verified("ckpt-000001", hash_files=False) is not None
    with pytest.raises(AssertionError, match="a file was opened"):
        store.latest("ckpt-")  # the default reads and hashes every file


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda data: data[:-1], "size mismatch for model.bin: manifest 4096, found 4095"),
        (None, "missing file model.bin"),
    ],
    ids=["truncated", "missing"],
)
def test_choosing_on_sizes_quarantines_a_wrong_size(store_root, damage, reason):
    store, lease = new_runner(store_root, "job")
    payload = os.urandom(4096)
    commit_state(store, lease, "ckpt-000001", {"model.bin": payload})
    bad = commit_state(store, lease, "ckpt-000002", {"model.bin": payload[::-1]})
    if damage is None:
        remove(file_url(bad, store, "model.bin"))
    else:
        overwrite(file_url(bad, store, "model.bin"), damage(payload[::-1]))
    assert store.latest("ckpt-", hash_files=False).key == "ckpt-000001"
    [note] = store.quarantined()
    assert (note["key"], note["attempt"]) == ("ckpt-000002", bad.attempt)
    assert note["reason"] == f"state ckpt-000002 ({bad.attempt}): {reason}"


def test_a_flipped_byte_passes_the_size_check_and_is_caught_by_the_read(store_root, tmp_path):
    """The hash is checked on the one real read; quarantining with the reason it gives
    writes the same note a full verification writes, and the previous state is chosen."""
    store, lease = new_runner(store_root, "job")
    payload = os.urandom(4096)
    commit_state(store, lease, "ckpt-000001", {"model.bin": payload})
    bad = commit_state(store, lease, "ckpt-000002", {"model.bin": payload[::-1], "opt.bin": b"o2"})
    flipped = bytearray(payload[::-1])
    flipped[100] ^= 0x01
    overwrite(file_url(bad, store, "model.bin"), bytes(flipped))

    chosen = store.latest("ckpt-", hash_files=False)
    assert chosen.key == "ckpt-000002" and store.quarantined() == []
    with pytest.raises(CorruptState) as info:
        chosen.get_dir(str(tmp_path / "copy"))
    assert info.value.attempt == bad.attempt and info.value.reason == "sha256 mismatch for model.bin"
    assert str(info.value) == f"state ckpt-000002 ({bad.attempt}): sha256 mismatch for model.bin"
    assert not (tmp_path / "copy" / "model.bin").exists()
    store.quarantine(chosen.key, reason=info.value.reason, lease=lease)

    assert store.latest("ckpt-", hash_files=False).key == "ckpt-000001"
    [note] = store.quarantined()
    assert note["reason"] == str(info.value)  # what latest() with hashing would have written
    assert store.committed_keys("ckpt-") == ["ckpt-000001"]


def test_all_states_corrupt_raises_no_valid_state(store_root):
    store, lease = new_runner(store_root, "job")
    states = [commit_state(store, lease, f"ckpt-{i:06d}", {"w": b"weights-%d" % i}) for i in (1, 2, 3)]
    for state in states:
        overwrite(file_url(state, store, "w"), b"garbage!!!")
    with pytest.raises(NoValidState) as info:
        store.latest("ckpt-")
    message = str(info.value)
    assert "\n" not in message
    assert all(f"ckpt-{i:06d}" in message for i in (1, 2, 3))
    assert len(store.quarantined()) == 3
    with pytest.raises(NoValidState, match="quarantined"):  # and again, without re-verifying
        store.latest("ckpt-")
    assert store.latest("other-") is None
    assert store.committed_keys("ckpt-") == []


def test_corrupt_commit_record_is_quarantined(store_root):
    store, lease = new_runner(store_root, "job")
    commit_state(store, lease, "k-1", {"a": b"1"})
    commit_state(store, lease, "k-2", {"a": b"2"})
    overwrite(store.url("states", "k-2", "COMMIT"), b"{not json")
    assert store.latest("k-").key == "k-1"
    assert store.quarantined()[0]["key"] == "k-2"
    assert store.committed_keys("k-") == ["k-1"]


def test_tampered_manifest_is_rejected(store_root):
    store, lease = new_runner(store_root, "job")
    commit_state(store, lease, "k-1", {"a": b"1"})
    bad = commit_state(store, lease, "k-2", {"a": b"2"})
    manifest_url = store.url("states", "k-2", bad.attempt, "MANIFEST.json")
    manifest = dict(bad.manifest, meta={"step": 123})
    overwrite(manifest_url, json.dumps(manifest).encode())
    assert store.latest("k-").key == "k-1"
    assert "does not match" in store.quarantined()[0]["reason"]


# --------------------------------------------------------------------------- leases and fencing


def test_lease_generations_increase(store_root):
    assert StateStore(store_root).current_generation() == 0
    generations = []
    for holder in ("a", "b", "c"):
        store, lease = new_runner(store_root, holder)
        generations.append(lease.generation)
        assert lease.holder == holder and lease.run_id
        store.release(lease)
    assert generations == [1, 2, 3]
    assert StateStore(store_root).current_generation() == 3


def test_superseded_writer_is_fenced(store_root):
    store_a, lease_a = new_runner(store_root, "runner-a")
    commit_state(store_a, lease_a, "ckpt-000001", {"w": b"a1"})
    staged_a = store_a.stage("ckpt-000002", lease=lease_a, meta={})
    staged_a.write_bytes("w", b"a2")
    store_a.release(lease_a)  # A looks dead (its local lock is gone) but keeps running

    store_b, lease_b = new_runner(store_root, "runner-b")
    assert lease_b.generation == lease_a.generation + 1
    commit_state(store_b, lease_b, "ckpt-000003", {"w": b"b3"})

    with pytest.raises(LeaseLost, match="lease lost: generation 1 superseded by 2 .*runner-b"):
        staged_a.commit()
    with pytest.raises(LeaseLost):
        store_a.check_lease(lease_a)
    with pytest.raises(LeaseLost):
        store_a.stage("ckpt-000004", lease=lease_a, meta={})
    with pytest.raises(LeaseLost):
        store_a.delete("ckpt-000003", lease=lease_a)
    with pytest.raises(LeaseLost):
        store_a.retain("ckpt-", keep=0, lease=lease_a)
    with pytest.raises(LeaseLost):
        store_a.write_record("status", {"by": "a"}, lease=lease_a)
    with pytest.raises(LeaseLost):
        store_a.clean_staging(lease=lease_a)

    store_b.check_lease(lease_b)
    assert store_b.committed_keys("ckpt-") == ["ckpt-000001", "ckpt-000003"]
    state = StateStore(store_root).latest("ckpt-")
    assert state.key == "ckpt-000003" and state.read_bytes("w") == b"b3"
    assert store_b.open_verified("ckpt-000001").read_bytes("w") == b"a1"
    assert store_b.read_record("status") is None
    assert store_b.clean_staging(lease=lease_b) == 1  # A's unpublished attempt


def test_concurrent_lease_acquisition_gets_distinct_generations(store_root):
    if is_local(store_root):
        pytest.skip("local roots serialise acquirers with flock (tested separately)")
    leases, errors = [], []
    barrier = threading.Barrier(5)

    def acquire(i):
        try:
            barrier.wait()
            leases.append(StateStore(store_root).acquire_lease(holder=f"r{i}"))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=acquire, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(lease.generation for lease in leases) == [1, 2, 3, 4, 5]


def test_same_key_staged_twice_commits_once(store_root):
    store, lease = new_runner(store_root, "job")
    first = store.stage("ckpt-000001", lease=lease, meta={"n": 1})
    second = store.stage("ckpt-000001", lease=lease, meta={"n": 2})
    first.write_bytes("w", b"first")
    second.write_bytes("w", b"second")
    first.commit()
    with pytest.raises(StoreError, match="already committed by another writer") as info:
        second.commit()
    assert not isinstance(info.value, LeaseLost)
    state = store.open_verified("ckpt-000001")
    assert state.read_bytes("w") == b"first" and state.manifest["meta"] == {"n": 1}
    with pytest.raises(StoreError, match="already committed"):
        store.stage("ckpt-000001", lease=lease, meta={})
    with pytest.raises(StoreError, match="closed"):
        first.write_bytes("more", b"x")


def test_racing_commits_of_one_key_have_one_winner(store_root):
    store, lease = new_runner(store_root, "job")
    stagings = [store.stage("race", lease=lease, meta={"i": i}) for i in range(6)]
    for i, staged in enumerate(stagings):
        staged.write_bytes("w", b"writer-%d" % i)
    barrier = threading.Barrier(len(stagings))
    results = [None] * len(stagings)

    def commit(i):
        barrier.wait()
        try:
            results[i] = stagings[i].commit()
        except StoreError as exc:
            results[i] = exc

    threads = [threading.Thread(target=commit, args=(i,)) for i in range(len(stagings))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if isinstance(r, CommittedState)]
    assert len(winners) == 1, results
    assert all("already committed" in str(r) for r in results if not isinstance(r, CommittedState))
    state = store.open_verified("race")
    assert state.attempt == winners[0].attempt
    assert state.read_bytes("w") == b"writer-%d" % state.manifest["meta"]["i"]


# --------------------------------------------------------------------------- listing, retention, records


def test_latest_orders_zero_padded_keys(store_root):
    store, lease = new_runner(store_root, "job")
    for step in (9, 10, 2, 100):
        commit_state(store, lease, f"step-{step:06d}", {"s": str(step).encode()})
    commit_state(store, lease, "eval-000001", {"s": b"eval"})
    assert store.committed_keys("step-") == ["step-000002", "step-000009", "step-000010", "step-000100"]
    assert store.latest("step-").key == "step-000100"
    assert store.latest("eval-").read_bytes("s") == b"eval"
    assert store.latest("nothing-") is None
    assert store.committed_keys("") == ["eval-000001", "step-000002", "step-000009", "step-000010", "step-000100"]


def test_retain_keeps_newest(store_root):
    store, lease = new_runner(store_root, "job")
    for step in range(1, 6):
        commit_state(store, lease, f"ckpt-{step:06d}", {"w": b"%d" % step})
    commit_state(store, lease, "other-000001", {"w": b"o"})
    deleted = store.retain("ckpt-", keep=2, lease=lease)
    assert deleted == ["ckpt-000001", "ckpt-000002", "ckpt-000003"]
    assert store.committed_keys("ckpt-") == ["ckpt-000004", "ckpt-000005"]
    assert store.open_verified("ckpt-000001") is None
    assert not has_files(store.url("states", "ckpt-000001"))
    assert store.open_verified("other-000001") is not None
    assert store.retain("ckpt-", keep=2, lease=lease) == []
    with pytest.raises(StoreError, match="keep"):
        store.retain("ckpt-", keep=-1, lease=lease)


def test_delete_removes_state(store_root):
    store, lease = new_runner(store_root, "job")
    commit_state(store, lease, "k-1", {"a": b"1"})
    store.delete("k-1", lease=lease)
    assert store.open_verified("k-1") is None
    assert not has_files(store.url("states", "k-1"))
    store.delete("k-1", lease=lease)  # idempotent
    commit_state(store, lease, "k-1", {"a": b"again"})  # the key can be written again
    assert store.open_verified("k-1").read_bytes("a") == b"again"


def test_records_round_trip(store_root):
    store, lease = new_runner(store_root, "job")
    assert store.read_record("steps/train") is None
    assert store.read_records() == {}
    store.write_record("steps/train", {"status": "running"}, lease=lease)
    store.write_record("steps/train", {"status": "done", "step": 3}, lease=lease)
    store.write_record("steps/eval", {"status": "pending"}, lease=lease)
    store.write_record("run", {"id": 1}, lease=lease)
    assert store.read_record("steps/train") == {"status": "done", "step": 3}
    assert store.read_records("steps/") == {
        "steps/eval": {"status": "pending"},
        "steps/train": {"status": "done", "step": 3},
    }
    assert set(store.read_records()) == {"run", "steps/eval", "steps/train"}
    with pytest.raises(StoreError, match="not JSON-serialisable"):
        store.write_record("bad", {"x": object()}, lease=lease)


def test_empty_store(store_root):
    store = StateStore(store_root)
    assert store.latest("ckpt-") is None
    assert store.open_verified("ckpt-000001") is None
    assert store.committed_keys("") == []
    assert store.quarantined() == []


def test_invalid_names_are_rejected_with_one_line_errors(store_root):
    store, lease = new_runner(store_root, "job")
    for key in ("a/b", "..", "", ".hidden", "with space"):
        with pytest.raises(StoreError) as info:
            store.stage(key, lease=lease, meta={})
        assert "\n" not in str(info.value)
    staged = store.stage("ok", lease=lease, meta={})
    for name in ("../x", "/abs", "a//b", "a/./b", "MANIFEST.json"):
        with pytest.raises(StoreError):
            staged.write_bytes(name, b"x")
    staged.write_bytes("x", b"1")
    with pytest.raises(StoreError, match="already written"):
        staged.write_bytes("x", b"2")
    with pytest.raises(StoreError, match="not JSON-serialisable"):
        store.stage("meta", lease=lease, meta={"bad": {1, 2}})
    with pytest.raises(StoreError, match="no '/'"):
        store.latest("a/")


# --------------------------------------------------------------------------- backend specifics


def test_s3_create_only_is_enforced_by_the_server(s3_root):
    """s3fs ``mode="create"`` sends ``If-None-Match: *``; the server (moto) must refuse a second PUT."""
    root = s3_root("create-only")
    assert StateStore(root)._backend.native_create
    fs, path = fsspec.core.url_to_fs(root + "/probe")
    fs.pipe_file(path, b"first", mode="create")
    with pytest.raises(FileExistsError):
        fs.pipe_file(path, b"second", mode="create")
    assert fs.cat_file(path) == b"first"


# --------------------------------------------------------------------------- local filesystem only


def test_local_root_in_use_by_second_store(tmp_path):
    root = str(tmp_path / "store")
    first, lease = new_runner(root, "first")
    second = StateStore(root)
    with pytest.raises(StoreError, match=rf"state {root} is in use by another process \(pid {os.getpid()}\)"):
        second.acquire_lease(holder="second")
    assert second.current_generation() == 1  # the refused attempt recorded nothing
    first.release(lease)
    assert second.acquire_lease(holder="second").generation == 2


def test_local_lock_released_when_holder_is_killed(tmp_path):
    root = str(tmp_path / "store")
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from rmrun.store import StateStore; "
            "store = StateStore(sys.argv[1]); store.acquire_lease(holder='child'); "
            "print('ready', flush=True); time.sleep(60)",
            root,
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "ready"
        with pytest.raises(StoreError, match=f"pid {child.pid}"):
            StateStore(root).acquire_lease(holder="parent")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    assert StateStore(root).acquire_lease(holder="parent").generation == 2


def test_local_roots_are_normalised(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    relative = StateStore("rel/store")
    assert relative.root == str(tmp_path / "rel" / "store")
    assert StateStore(f"file://{tmp_path}/rel/store/").root == relative.root
    assert relative.url("states", "k") == posixpath.join(relative.root, "states", "k")
    assert StateStore("memory://bucket/x/").root == "memory://bucket/x"
    with pytest.raises(StoreError, match="str"):
        StateStore(tmp_path)  # pathlib.Path is refused: roots are str URLs


def test_store_package_imports_only_stdlib_and_fsspec():
    script = (
        "import sys, pkgutil, importlib, rmrun.store; "
        "[importlib.import_module(m.name) for m in pkgutil.iter_modules(rmrun.store.__path__, 'rmrun.store.')]; "
        "rmrun.store.StateStore('memory://imports'); "
        "bad = sorted(m for m in ('torch', 'numpy', 's3fs', 'boto3', 'botocore') if m in sys.modules); "
        "print(','.join(bad))"
    )
    env = {**os.environ, "PYTHONPATH": REPO_ROOT}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == ""
    assert importlib.util.find_spec("fsspec") is not None


# --------------------------------------------------------------------------- load failures, links, reachability


def test_quarantine_marks_a_state_that_verifies_but_does_not_load(store_root):
    store = StateStore(store_root)
    lease = store.acquire_lease(holder="test")
    for key in ("ckpt-1", "ckpt-2"):
        staged = store.stage(key, lease=lease, meta={})
        staged.write_bytes("optimizer.pt", b"fine bytes")
        staged.commit()
    assert store.latest("ckpt-").key == "ckpt-2"
    store.quarantine("ckpt-2", reason="does not load: UnpicklingError: refused", lease=lease)
    assert store.latest("ckpt-").key == "ckpt-1"
    [note] = store.quarantined()
    assert note["key"] == "ckpt-2" and note["reason"].endswith("does not load: UnpicklingError: refused")
    store.quarantine("ckpt-1", reason="does not load: KeyError", lease=lease)
    assert [n["key"] for n in store.quarantined("ckpt-1")] == ["ckpt-1"]  # one key's notes alone
    assert [n["key"] for n in store.quarantined()] == ["ckpt-1", "ckpt-2"]
    with pytest.raises(NoValidState, match="none verifies"):
        store.latest("ckpt-")
    store.release(lease)


def test_local_reads_do_not_follow_a_symlink_out_of_the_state(tmp_path):
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"secret")
    store = StateStore(str(tmp_path / "root"))
    lease = store.acquire_lease(holder="test")
    staged = store.stage("s", lease=lease, meta={})
    staged.write_bytes("data.bin", b"secret")  # same bytes: the hashes alone would accept the link
    committed = staged.commit()
    path = tmp_path / "root" / "states" / "s" / committed.attempt / "data.bin"
    path.unlink()
    path.symlink_to(outside)
    assert store.open_verified("s") is None
    [note] = store.quarantined()
    assert "data.bin is a symbolic link" in note["reason"]
    store.release(lease)


def test_holder_alive_tells_a_live_lease_from_a_dead_one(tmp_path):
    root = str(tmp_path / "root")
    store = StateStore(root)
    assert StateStore(root).holder_alive() is False
    lease = store.acquire_lease(holder="test")
    assert StateStore(root).holder_alive() is True
    store.release(lease)
    assert StateStore(root).holder_alive() is False


def test_check_reachable_names_a_missing_bucket(s3_root):
    StateStore(s3_root("reachable")).check_reachable()  # the test bucket exists
    with pytest.raises(FileNotFoundError, match="no such bucket 'no-such-bucket-rmrun'"):
        StateStore("s3://no-such-bucket-rmrun/x").check_reachable()


# --------------------------------------------------------------------------- several writers, one commit


def _local_files(tmp_path, name: str, files: dict[str, bytes]) -> dict[str, str]:
    """Write ``files`` under tmp_path/name; {state file name: local path}."""
    out = {}
    for rel, data in files.items():
        path = tmp_path / name / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        out[rel] = str(path)
    return out


def test_writers_without_the_lease_upload_into_the_holders_attempt(store_root, tmp_path):
    """Rank 0 stages; another writer, with only the attempt's name, uploads its files concurrently;
    rank 0 takes their entries and commits one state holding both."""
    store, lease = new_runner(store_root, "rank0")
    staged = store.stage("ckpt-000002", lease=lease, meta={"step": 2})
    mine = {"model.safetensors": os.urandom(2**20 + 5), "rng/rank-00000.json": b"[0]"}
    theirs = {f"shards/rank-00001-{i}.bin": os.urandom(1000 + i) for i in range(12)}
    theirs["rng/rank-00001.json"] = b"[1]"
    staged.put_files(_local_files(tmp_path, "rank0", mine))
    other = StateStore(store_root).attempt_writer("ckpt-000002", staged.attempt)  # another process: no lease
    entries = other.put_files(_local_files(tmp_path, "rank1", theirs))
    assert [e["path"] for e in entries] == sorted(theirs)
    assert all(e["size"] == len(theirs[e["path"]]) and e["sha256"] == sha(theirs[e["path"]]) for e in entries)
    assert store.open_verified("ckpt-000002") is None  # nothing visible before the holder commits
    staged.add_files(entries)
    staged.commit(meta={"upload_seconds": 1.5})
    state = store.open_verified("ckpt-000002")
    assert state.files == sorted({**mine, **theirs})
    assert all(state.read_bytes(name) == data for name, data in {**mine, **theirs}.items())
    assert state.manifest["meta"] == {"step": 2, "upload_seconds": 1.5}


def test_a_file_reported_but_not_uploaded_is_never_committed(store_root, tmp_path):
    store, lease = new_runner(store_root, "rank0")
    staged = store.stage("ckpt-000003", lease=lease, meta={})
    entries = store.attempt_writer("ckpt-000003", staged.attempt).put_files(
        _local_files(tmp_path, "rank1", {"a.bin": b"aaaa", "b.bin": b"bbbbbbbb"})
    )
    remove(store.url("states", "ckpt-000003", staged.attempt, "b.bin"))  # the upload that never arrived
    staged.add_files(entries)
    with pytest.raises(StoreError, match=r"file b\.bin is missing; not committed"):
        staged.commit()
    assert store.open_verified("ckpt-000003") is None and store.committed_keys("ckpt-") == []
    # Negative control: the same entries, all uploaded, do commit.
    staged = store.stage("ckpt-000003", lease=lease, meta={})
    staged.add_files(
        store.attempt_writer("ckpt-000003", staged.attempt).put_files(
            _local_files(tmp_path, "again", {"a.bin": b"aaaa", "b.bin": b"bbbbbbbb"})
        )
    )
    staged.commit()
    assert store.committed_keys("ckpt-") == ["ckpt-000003"]


def test_two_writers_of_one_name_and_bad_attempt_names_are_refused(store_root, tmp_path):
    store, lease = new_runner(store_root, "rank0")
    staged = store.stage("ckpt-000004", lease=lease, meta={})
    staged.put_files(_local_files(tmp_path, "rank0", {"scheduler.pt": b"x"}))
    entries = store.attempt_writer("ckpt-000004", staged.attempt).put_files(
        _local_files(tmp_path, "rank1", {"scheduler.pt": b"x"})
    )
    with pytest.raises(StoreError, match="'scheduler.pt' already written to staged state ckpt-000004"):
        staged.add_files(entries)
    for attempt in ("../other", "x", "g000001-run-ab/c", ""):
        with pytest.raises(StoreError, match="invalid attempt name"):
            store.attempt_writer("ckpt-000004", attempt)
    with pytest.raises(StoreError, match="invalid file name"):
        store.attempt_writer("ckpt-000004", staged.attempt).put_files(
            {"../escape": str(tmp_path / "rank0" / "scheduler.pt")}
        )


# --------------------------------------------------------------------------- formats and moving aside


def _tree(root: str) -> dict[str, bytes]:
    fs, path = fsspec.core.url_to_fs(root)
    fs.invalidate_cache()
    return {name[len(path) :]: fs.cat_file(name) for name in sorted(fs.find(path))}


def _as_newer(store_root: str, key: str, *, commit_too: bool) -> None:
    """Rewrite ``key``'s manifest (and COMMIT) as a newer rmrun (format 2) would write them."""
    commit_url = posixpath.join(store_root, "states", key, "COMMIT")
    fs, commit_path = fsspec.core.url_to_fs(commit_url)
    record = json.loads(fs.cat_file(commit_path))
    manifest_url = posixpath.join(store_root, "states", key, record["attempt"], "MANIFEST.json")
    manifest = json.loads(fsspec.core.url_to_fs(manifest_url)[0].cat_file(fsspec.core.url_to_fs(manifest_url)[1]))
    manifest["format"] = 2
    raw = json.dumps(manifest).encode()
    overwrite(manifest_url, raw)
    if commit_too:
        record.update(format=2, manifest_sha256=hashlib.sha256(raw).hexdigest())
        overwrite(commit_url, json.dumps(record).encode())


@pytest.mark.parametrize("commit_too", [True, False], ids=["commit-and-manifest", "manifest-only"])
def test_a_state_in_a_newer_format_is_refused_and_left_untouched(store_root, commit_too):
    store, lease = new_runner(store_root, "job")
    commit_state(store, lease, "ckpt-000001", {"model.bin": b"old"})
    commit_state(store, lease, "ckpt-000002", {"model.bin": b"new"})
    _as_newer(store_root, "ckpt-000002", commit_too=commit_too)
    before = _tree(store_root)
    for read in (
        store.check_formats,
        lambda: store.open_verified("ckpt-000002"),
        lambda: store.open_unverified("ckpt-000002"),
        lambda: store.latest("ckpt-"),
    ):
        with pytest.raises(
            NewerFormat,
            match=r"state ckpt-000002 \(its (COMMIT|MANIFEST.json)\) was written by a newer rmrun \(format 2; this one reads format 1\): upgrade rmrun",
        ):
            read()
    assert _tree(store_root) == before  # not quarantined, not rewritten, not deleted
    assert store.quarantined() == []


def test_a_replaced_state_is_moved_aside_not_deleted(store_root):
    store, lease = new_runner(store_root, "job")
    commit_state(store, lease, "ckpt-000001", {"model.bin": b"weights", "sub/opt.bin": b"moments"})
    store.quarantine("ckpt-000001", reason="does not load", lease=lease)
    assert store.open_verified("ckpt-000001") is None
    where = store.set_aside("ckpt-000001", lease=lease)
    assert where.startswith(posixpath.join(store.root, "quarantined", "ckpt-000001."))
    moved = {name.rsplit("/", 1)[-1] for name in _tree(where)}
    assert {"model.bin", "opt.bin", "MANIFEST.json", "COMMIT"} <= moved, moved
    assert any(name.startswith("QUARANTINE-") for name in moved), moved
    commit_state(store, lease, "ckpt-000001", {"model.bin": b"recomputed"})  # the key is free again
    assert store.open_verified("ckpt-000001").read_bytes("model.bin") == b"recomputed"
    store.clean_staging(lease=store.acquire_lease(holder="next"))
    assert b"weights" in _tree(where).values()  # a later start's cleaning leaves it alone
