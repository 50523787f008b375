"""rmrun.runtime.nodecopy in one process (no process group: the collectives are no-ops), the
decision every process takes from the readers' reports, and the node layout rmrun.runtime.dist
reads from the launcher. The multi-process behaviour is tested in tests/e2e/test_state_reads.py."""

from __future__ import annotations

import os
import tempfile

import pytest

from rmrun.runtime import dist
from rmrun.runtime.dist import Rank
from rmrun.runtime.nodecopy import NodeReadFailed, _outcome, node_copy
from rmrun.store import StateStore

ONE = Rank(rank=0, world_size=1, local_rank=0, cuda=False)


def committed(tmp_path, files: dict[str, bytes]) -> tuple[StateStore, object]:
    store = StateStore(str(tmp_path / "store"))
    lease = store.acquire_lease(holder="test")
    staged = store.stage("ckpt-1", lease=lease, meta={"step": 1})
    for name, data in files.items():
        staged.write_bytes(name, data)
    return store, staged.commit()


def test_a_verified_copy_in_scratch_removed_afterwards(tmp_path, monkeypatch):
    (tmp_path / "scratch").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "scratch"))  # what TMPDIR sets in a new process
    store, _ = committed(tmp_path, {"model.bin": b"weights", "rng/rank-00000.json": b"{}"})
    with node_copy(store, "ckpt-1", rank=ONE) as copy:
        assert copy.corrupt is None and copy.meta == {"step": 1}
        assert copy.directory.startswith(str(tmp_path / "scratch"))
        with open(os.path.join(copy.directory, "rng", "rank-00000.json"), "rb") as f:
            assert f.read() == b"{}"
    assert not os.path.exists(copy.directory)


def test_a_corrupt_file_gives_no_copy_and_the_reason(tmp_path):
    store, state = committed(tmp_path, {"model.bin": b"weights"})
    path = tmp_path / "store" / "states" / "ckpt-1" / state.attempt / "model.bin"
    path.write_bytes(b"weighTs")
    with node_copy(store, "ckpt-1", rank=ONE) as copy:
        assert copy.directory is None
        assert copy.corrupt.attempt == state.attempt and copy.corrupt.reason == "sha256 mismatch for model.bin"
    assert store.quarantined() == []  # quarantining is the lease holder's decision


def test_a_vanished_state_is_an_error(tmp_path):
    store, _ = committed(tmp_path, {"model.bin": b"weights"})
    with pytest.raises(RuntimeError, match="state ckpt-2 vanished"):
        with node_copy(store, "ckpt-2", rank=ONE):
            pass


def report(rank: int, node: int, directory: str | None, problem: dict | None = None, meta: dict | None = None):
    return {"rank": rank, "node": node, "directory": directory, "problem": problem, "meta": meta or {}}


def test_each_process_reads_its_own_nodes_copy():
    reports = [
        report(0, 0, "/n0/copy", meta={"step": 4}),
        report(1, 0, None),
        report(2, 1, "/n1/copy", meta={"step": 4}),
        report(3, 1, None),
    ]
    third = Rank(rank=3, world_size=4, local_rank=1, cuda=False, node=1, is_node_leader=False)
    copy = _outcome("ckpt-4", reports, rank=third, own=None, error=None)
    assert copy.directory == "/n1/copy" and copy.meta == {"step": 4} and copy.corrupt is None
    leader = Rank(rank=2, world_size=4, local_rank=0, cuda=False, node=1)
    assert _outcome("ckpt-4", reports, rank=leader, own="/n1/copy", error=None).directory == "/n1/copy"


def test_one_nodes_finding_is_every_processs():
    corrupt = {
        "kind": "corrupt",
        "message": "state ckpt-4 (a): sha256 mismatch for x",
        "attempt": "a",
        "reason": "sha256 mismatch for x",
    }
    reports = [report(0, 0, "/n0/copy"), report(1, 1, "/n1/copy", corrupt)]
    for rank in (Rank(0, 2, 0, False, node=0), Rank(1, 2, 0, False, node=1)):
        copy = _outcome("ckpt-4", reports, rank=rank, own=f"/n{rank.node}/copy", error=None)
        assert copy.directory is None and copy.corrupt.reason == "sha256 mismatch for x"
        assert str(copy.corrupt) == corrupt["message"] and copy.corrupt.attempt == "a"

    failed = [report(0, 0, "/n0/copy"), report(1, 1, "/n1/copy", {"kind": "failed", "message": "OSError: EIO"})]
    with pytest.raises(NodeReadFailed, match="rank 1 could not read state ckpt-4: OSError: EIO"):
        _outcome("ckpt-4", failed, rank=Rank(0, 2, 0, False), own="/n0/copy", error=None)
    own_error = OSError(5, "the reader's own error")
    with pytest.raises(OSError, match="the reader's own error"):
        _outcome("ckpt-4", failed, rank=Rank(1, 2, 0, False, node=1), own="/n1/copy", error=own_error)


@pytest.mark.parametrize(
    "env, place",
    [
        ({"GROUP_RANK": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"}, (1, True)),
        ({"GROUP_RANK": "1", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}, (1, False)),
        ({"LOCAL_WORLD_SIZE": "2"}, (1, False)),  # rank 3 of 2 per node
        ({}, (3, True)),  # nothing known: every process is its own node
    ],
)
def test_the_node_layout_comes_from_the_launcher_not_the_host_name(monkeypatch, env, place):
    for name in ("GROUP_RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert dist._node_place(3, int(env.get("LOCAL_RANK", "0"))) == place


# ----------------------------------------------------------------- a copy kept on the node


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    (tmp_path / "scratch").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "scratch"))
    return tmp_path / "scratch"


def _reads(monkeypatch) -> list[str]:
    """The names of the files read from the store from now on."""
    from rmrun.store.states import CommittedState

    read: list[str] = []
    original = CommittedState.get_file

    def counting(self, name, local_path):
        read.append(name)
        return original(self, name, local_path)

    monkeypatch.setattr(CommittedState, "get_file", counting)
    return read


def test_a_kept_copy_is_used_again_without_a_read_while_the_stored_files_are_unchanged(tmp_path, scratch, monkeypatch):
    store, state = committed(tmp_path, {"train.safetensors": b"tokens" * 100, "stats.json": b"{}"})
    read = _reads(monkeypatch)
    with node_copy(store, "ckpt-1", rank=ONE, keep=True) as first:
        assert first.corrupt is None and first.meta == {"step": 1}
    assert sorted(read) == ["stats.json", "train.safetensors"]
    assert os.path.isfile(os.path.join(first.directory, "train.safetensors")), "kept after the block"
    assert first.directory.startswith(str(scratch / "rmrun-node-cache"))
    with node_copy(store, "ckpt-1", rank=ONE, keep=True) as second:
        assert second.directory == first.directory and second.meta == {"step": 1}
    assert len(read) == 2, "the second start read nothing"

    # the stored file written again, same size (a flipped byte): the stamps differ, it is read and caught
    stored = tmp_path / "store" / "states" / "ckpt-1" / state.attempt / "train.safetensors"
    stored.write_bytes(b"tokenS" + b"tokens" * 99)
    with node_copy(store, "ckpt-1", rank=ONE, keep=True) as third:
        assert third.directory is None and third.corrupt.reason == "sha256 mismatch for train.safetensors"
    assert "train.safetensors" in read[2:]


def test_a_kept_file_of_another_size_is_read_again(tmp_path, scratch, monkeypatch):
    store, _ = committed(tmp_path, {"train.safetensors": b"tokens" * 100})
    with node_copy(store, "ckpt-1", rank=ONE, keep=True) as first:
        pass
    with open(os.path.join(first.directory, "train.safetensors"), "r+b") as f:
        f.truncate(10)
    read = _reads(monkeypatch)
    with node_copy(store, "ckpt-1", rank=ONE, keep=True) as again:
        with open(os.path.join(again.directory, "train.safetensors"), "rb") as f:
            assert f.read() == b"tokens" * 100
    assert read == ["train.safetensors"]


def test_only_the_newest_kept_copy_of_a_store_stays(tmp_path, scratch):
    store, _ = committed(tmp_path, {"a.bin": b"one"})
    with node_copy(store, "ckpt-1", rank=ONE, keep=True) as first:
        pass
    lease = store.acquire_lease(holder="test-2")
    staged = store.stage("ckpt-2", lease=lease, meta={"step": 2})
    staged.write_bytes("a.bin", b"two")
    staged.commit()
    with node_copy(store, "ckpt-2", rank=ONE, keep=True) as second:
        pass
    assert os.path.isdir(second.directory) and not os.path.exists(first.directory)
    assert os.listdir(os.path.dirname(second.directory)) == [os.path.basename(second.directory)]


def test_nothing_is_kept_in_a_cache_folder_others_can_write(tmp_path, scratch):
    store, _ = committed(tmp_path, {"a.bin": b"one"})
    (scratch / "rmrun-node-cache").mkdir(mode=0o777)
    os.chmod(scratch / "rmrun-node-cache", 0o777)
    with node_copy(store, "ckpt-1", rank=ONE, keep=True) as copy:
        with open(os.path.join(copy.directory, "a.bin"), "rb") as f:
            assert f.read() == b"one"
    assert not os.path.exists(copy.directory), "a copy that could not be kept privately is removed"


def test_the_copies_of_a_store_unused_for_three_days_are_removed(tmp_path, scratch):
    old_store, _ = committed(tmp_path / "old", {"a.bin": b"old"})
    with node_copy(old_store, "ckpt-1", rank=ONE, keep=True) as old:
        pass
    store, _ = committed(tmp_path, {"a.bin": b"new"})
    with node_copy(store, "ckpt-1", rank=ONE, keep=True) as recent:
        pass
    assert os.path.isdir(old.directory), "used two starts ago, not three days ago"
    folder = os.path.dirname(old.directory)
    os.utime(folder, (os.stat(folder).st_atime, os.stat(folder).st_mtime - 3 * 24 * 3600 - 60))
    with node_copy(store, "ckpt-1", rank=ONE, keep=True):
        pass
    assert not os.path.exists(folder) and os.path.isdir(recent.directory)
