"""A resume reads each byte of its state once per node, and still resumes exactly.

The state lives on a moto S3 server on loopback that counts the bytes it serves per
client (tests/s3counting.py); each simulated node signs its requests with its own access
key id, so the count is per node. "The state" of a resume is the checkpoint it resumed
from plus the tokenized data (the sum of their files' sizes in their manifests). The
resume is every request a node makes before the first one for the next checkpoint (by
then every rank has loaded the state); it may read at most 1.05 times that per node (the
rest: COMMIT records, manifests, listings, the metric history, leases and records). Over
the whole resumed run, to its export, the files of that checkpoint and of the tokenized
data are read at most once per node. (The whole run reads more: the listings and records
of the checkpoints it writes, about 1.06x here for a 2 MB state; a fixed cost that does
not grow with the state.)

The recipe is tests/assets/resume.toml (a tiny Llama with dropout) on 24 training and 8
eval pairs, 2 pairs per process and step on 2 processes: 6 optimizer steps in one epoch,
a checkpoint every 2 steps (keep 2), an eval every 3. Every run is killed with
``kill@step:5`` (after checkpoint 4 is committed) and resumed from checkpoint 4; its
export is compared bit for bit with an uninterrupted 2-process run's.

- 1 node x 2 processes (``torchrun --nproc_per_node=2``): the node reads <= 1.05x; and the
  tokenized data not at all, since the node kept its verified copy from the killed start.
- Negative control: the same resume with ``RMRUN_FAULTS=no-node-copy`` (every process
  reads the state itself) must read more than 1.05x, so the bound has teeth.
- A checkpoint with one byte flipped (sizes right) passes the choice, is caught by the one
  read, quarantined by rank 0 with the message a full verification gives, and every rank
  falls back to checkpoint 2; the run still finishes bit-identical.
- 2 simulated nodes x 1 process: two ``torchrun --nnodes=2 --node_rank=0/1`` launchers
  on 127.0.0.1, each with its own TMPDIR, HOME, working directory and copy of the recipe
  and data (nothing on local disk shared). The spot-instance case: node 1's worker is
  SIGKILLed at step 5 (its launcher's ``kill@step:5:all``), node 0's worker fails with
  it, both launchers are started again on replaced machines (empty scratch) and the run
  finishes bit-identical; that resume
  reads <= 1.05x on each node.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.resume_harness import (
    EXIT_OK,
    Child,
    Config,
    RunDirs,
    assert_identical,
    committed_checkpoints,
    read_export,
)

REPO = Path(__file__).resolve().parents[2]
SOURCE_TRAIN = REPO / "recipes" / "data" / "quickstart_train.jsonl"
SOURCE_EVAL = REPO / "recipes" / "data" / "quickstart_eval.jsonl"
TOTAL_STEPS = 6
KILL = "kill@step:5"  # checkpoints 2 and 4 committed, the run resumes from 4
RESUMED_FROM = "ckpt-0000000004"
NEXT_CHECKPOINT = "ckpt-0000000006"
BOUND = 1.05
TIMEOUT = 300
LAUNCH_TAG = uuid.uuid4().hex  # marks the processes this module starts


# ----------------------------------------------------------------- nodes and launches


@dataclass(frozen=True)
class Node:
    """A simulated machine: its own scratch, home, working directory, recipe and data."""

    index: int
    base: Path

    @property
    def client(self) -> str:
        return f"node{self.index}"

    @property
    def recipe(self) -> Path:
        return self.base / "recipe.toml"

    def env(self, counting_s3, *, faults: str | None = None) -> dict:
        env = counting_s3.client_env(self.client)
        env.update(
            PYTHONWARNINGS="ignore",
            PYTHONUNBUFFERED="1",
            OMP_NUM_THREADS="1",
            TOKENIZERS_PARALLELISM="false",
            TMPDIR=str(self.base / "tmp"),
            HOME=str(self.base / "home"),
        )
        env["RMRUN_TEST_LAUNCH"] = LAUNCH_TAG
        env.pop("RMRUN_FAULTS", None)
        if faults:
            env["RMRUN_FAULTS"] = faults
        return env

    def replaced(self) -> None:
        """The machine replaced by a new one (a spot replacement): its scratch disk empty."""
        shutil.rmtree(self.base / "tmp")
        (self.base / "tmp").mkdir()


def make_node(base: Path, index: int) -> Node:
    node = Node(index, base / f"node{index}")
    for sub in ("tmp", "home", "cwd", "data"):
        (node.base / sub).mkdir(parents=True, exist_ok=True)
    data = {}
    for split, source, count in (("train", SOURCE_TRAIN, 24), ("eval", SOURCE_EVAL, 8)):
        lines = [line for line in source.read_text().splitlines(keepends=True) if line.strip()][:count]
        data[split] = node.base / "data" / f"{split}.jsonl"
        data[split].write_text("".join(lines))
    node.recipe.write_text(
        f'extends = "{REPO}/tests/assets/resume.toml"\n'
        f'[data]\ntrain = ["{data["train"]}"]\neval = ["{data["eval"]}"]\n'
        "[schedule]\nmax_epochs = 1\nbatch_size = 2\n[checkpoint]\ninterval_steps = 2\n[eval]\ninterval_steps = 3\n"
    )
    return node


def rmrun_args(node: Node, root: str) -> list[str]:
    return [
        "-m",
        "rmrun",
        "run",
        str(node.recipe),
        "--set",
        f"run.state={root}/state",
        "--set",
        f"output.dir={root}/export",
    ]


def start_one_node(node: Node, root: str, counting_s3, *, faults: str | None = None) -> Child:
    argv = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=localhost:0",
        *rmrun_args(node, root),
    ]
    return Child(argv, node.env(counting_s3, faults=faults), node.base / "cwd", faults or "")


def free_port() -> int:
    """A port the OS has just handed out: the two launchers of a static rendezvous must both
    know it before either starts, so it cannot be left to the first one to pick."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_two_nodes(nodes: list[Node], root: str, counting_s3, *, faults: dict | None = None) -> list[Child]:
    port = free_port()
    children = []
    for node in nodes:
        argv = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=2",
            f"--node_rank={node.index}",
            "--nproc_per_node=1",
            "--master_addr=127.0.0.1",
            f"--master_port={port}",
            *rmrun_args(node, root),
        ]
        node_faults = (faults or {}).get(node.index)
        children.append(Child(argv, node.env(counting_s3, faults=node_faults), node.base / "cwd", node_faults or ""))
    return children


def stop_leftovers() -> None:
    """Kill, by pid, every process this module launched that is still alive: torchrun starts
    each worker in a session of its own, so a launcher's process group does not hold them,
    and a launcher killed first leaves them orphaned. They carry LAUNCH_TAG in their
    environment."""
    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and proc.environ().get("RMRUN_TEST_LAUNCH") == LAUNCH_TAG:
                proc.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass


def wait_all(children: list[Child]):
    try:
        return [child.wait(timeout=TIMEOUT) for child in children]
    finally:
        stop_leftovers()


# ----------------------------------------------------------------- what is stored, what was read


def state_files(root: str, key: str) -> dict[str, int]:
    """{URL: size} of every file in the manifest of committed state ``key``."""
    from rmrun.store import StateStore

    state = StateStore(f"{root}/state").open_unverified(key)
    assert state is not None, f"{key} is not committed under {root}"
    return {f"{root}/state/states/{key}/{state.attempt}/{e['path']}": e["size"] for e in state.manifest["files"]}


def resume_bytes(root: str) -> dict:
    """The bytes a resume from RESUMED_FROM needs: that checkpoint and the tokenized data."""
    from rmrun.store import StateStore

    [tokenized] = StateStore(f"{root}/state").committed_keys("tokenize-")
    files = {"checkpoint": state_files(root, RESUMED_FROM), "tokenized": state_files(root, tokenized)}
    sizes = {what: sum(found.values()) for what, found in files.items()}
    sizes["total"] = sizes["checkpoint"] + sizes["tokenized"]
    sizes["files"] = files
    return sizes


def read_report(counting_s3, root: str, client: str, stored: dict) -> dict:
    """What ``client`` read: during the resume (every request before the first one for the
    next checkpoint, ckpt-6: all the reading of the state is done by then, on every rank)
    and over the whole run; and of the checkpoint's and the tokenized data's files."""
    until = f"{root}/state/states/{NEXT_CHECKPOINT}"
    report = {
        "resume": counting_s3.served(client=client, until=until),
        "run": counting_s3.served(client=client),
        "largest": counting_s3.largest(client=client, until=until),
    }
    for what, files in stored["files"].items():  # the files themselves, over the whole run
        report[what] = sum(counting_s3.served(client=client, under=url, kind="object") for url in files)
    return report


def describe(report: dict, stored: dict) -> str:
    return (
        f"read {report['resume']} bytes during the resume for {stored['total']} stored "
        f"({report['resume'] / stored['total']:.3f}x; checkpoint {report['checkpoint']} of {stored['checkpoint']}, "
        f"tokenized data {report['tokenized']} of {stored['tokenized']}); {report['run']} bytes over the "
        f"whole resumed run ({report['run'] / stored['total']:.3f}x)"
    )


def assert_read_once(report: dict, stored: dict, where: str) -> None:
    assert report["resume"] <= BOUND * stored["total"], (
        f"{where}: {describe(report, stored)}; the largest reads: {report['largest']}"
    )
    # ... and never again later in the run.
    assert report["checkpoint"] <= BOUND * stored["checkpoint"], f"{where}: {describe(report, stored)}"
    assert report["tokenized"] <= BOUND * stored["tokenized"], f"{where}: {describe(report, stored)}"


# ----------------------------------------------------------------- fixtures


def test_the_counter_counts_the_bytes_served_per_client(counting_s3):
    """The measuring instrument itself: a read of N bytes by one client counts N for it."""
    import fsspec

    root = counting_s3.root("counter")
    fs, path = fsspec.core.url_to_fs(root)
    payload = os.urandom(12345)
    fs.pipe_file(f"{path}/object.bin", payload)
    counting_s3.reset()
    assert fs.cat_file(f"{path}/object.bin") == payload
    assert counting_s3.served(under=f"{root}/object.bin") == len(payload)
    assert counting_s3.served(client="testing", under=root) == len(payload)
    assert counting_s3.served(client="someone-else") == 0


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("state-reads")


@pytest.fixture(scope="module")
def reference(workdir, counting_s3):
    """An uninterrupted 1 node x 2 processes run on S3: its export."""
    node = make_node(workdir / "reference", 0)
    root = counting_s3.root("reference")
    [result] = wait_all([start_one_node(node, root, counting_s3)])
    assert result.returncode == EXIT_OK, result.describe()
    return read_export(f"{root}/export")


@pytest.fixture(scope="module")
def killed_one_node(workdir, counting_s3):
    """A 1 node x 2 processes state killed at step 5, and two spare copies of it."""
    import fsspec

    node = make_node(workdir / "one-node", 0)
    root = counting_s3.root("one-node")
    [result] = wait_all([start_one_node(node, root, counting_s3, faults=KILL)])
    assert result.returncode != EXIT_OK and "ChildFailedError" in result.output, result.describe()
    assert checkpoints(root) == [2, 4]
    spares = [counting_s3.root(f"one-node-spare{i}") for i in range(2)]
    fs, _ = fsspec.core.url_to_fs(root)
    for spare in spares:
        fs.copy(f"{root}/state".split("://", 1)[1], f"{spare}/state".split("://", 1)[1], recursive=True)
    return node, root, spares


def checkpoints(root: str) -> list[int]:
    return committed_checkpoints(RunDirs(Config(2, "s3"), state=f"{root}/state", export="", label=""))


# ----------------------------------------------------------------- 1 node x 2 processes


@pytest.mark.slow
def test_one_node_with_two_processes_reads_the_state_once(killed_one_node, reference, counting_s3):
    node, root, _ = killed_one_node
    stored = resume_bytes(root)
    counting_s3.reset()
    [result] = wait_all([start_one_node(node, root, counting_s3)])
    report = read_report(counting_s3, root, node.client, stored)
    assert result.returncode == EXIT_OK, result.describe()
    assert result.resumed_from() == (RESUMED_FROM, 4), result.describe()
    assert counting_s3.clients() <= {node.client}, counting_s3.clients()
    print(f"1 node x 2 processes: {describe(report, stored)}")
    assert_read_once(report, stored, "1 node x 2 processes")
    # the same machine again: the tokenized data it kept from the killed start is not read at all
    assert report["tokenized"] == 0 and report["checkpoint"] >= stored["checkpoint"], describe(report, stored)
    assert_identical(reference, read_export(f"{root}/export"), total_steps=TOTAL_STEPS)


@pytest.mark.slow
def test_negative_control_every_process_reading_for_itself_exceeds_the_bound(killed_one_node, counting_s3):
    """With the once-per-node read switched off, the same resume reads about twice the state:
    the counter and the bound would catch a regression. (Killed once loaded: the reads are done.)"""
    node, _, (spare, _) = killed_one_node
    stored = resume_bytes(spare)
    counting_s3.reset()
    [result] = wait_all([start_one_node(node, spare, counting_s3, faults="no-node-copy,kill@boosted")])
    report = read_report(counting_s3, spare, node.client, stored)
    assert "ChildFailedError" in result.output and result.resumed_from() == (RESUMED_FROM, 4), result.describe()
    print(f"1 node x 2 processes, every process reading for itself: {describe(report, stored)}")
    assert report["resume"] > BOUND * stored["total"], describe(report, stored)
    assert report["checkpoint"] >= 2 * stored["checkpoint"], describe(report, stored)
    assert report["tokenized"] >= 2 * stored["tokenized"], describe(report, stored)


@pytest.mark.slow
def test_a_checkpoint_found_corrupt_by_the_node_read_is_quarantined_and_the_previous_one_used(
    killed_one_node, reference, counting_s3
):
    """Sizes right, one byte flipped: the choice passes it, the one read catches it; rank 0
    quarantines it and every rank falls back to checkpoint 2, then finishes exactly."""
    import fsspec

    from rmrun.store import StateStore

    node, _, (_, corrupt) = killed_one_node
    [model_url] = [url for url in state_files(corrupt, RESUMED_FROM) if url.endswith("model.safetensors")]
    fs, path = fsspec.core.url_to_fs(model_url)
    data = bytearray(fs.cat_file(path))
    data[len(data) // 2] ^= 0x01
    fs.pipe_file(path, bytes(data))

    [result] = wait_all([start_one_node(node, corrupt, counting_s3)])
    assert result.returncode == EXIT_OK, result.describe()
    attempt = model_url.split("/")[-2]
    said = (
        f"quarantined {RESUMED_FROM} ({attempt}): state {RESUMED_FROM} ({attempt}): "
        "sha256 mismatch for model.safetensors"
    )
    assert re.search(rf"^{re.escape(said)}$", result.output, re.M), result.describe()
    assert result.resumed_from() == ("ckpt-0000000002", 2), result.describe()
    store = StateStore(f"{corrupt}/state")
    notes = store.quarantined() + list(store.read_records("quarantined/").values())  # moved once ckpt 4 is redone
    assert [n["reason"] for n in notes] == [
        f"state {RESUMED_FROM} ({attempt}): sha256 mismatch for model.safetensors"
    ], notes
    assert_identical(reference, read_export(f"{corrupt}/export"), total_steps=TOTAL_STEPS)


# ----------------------------------------------------------------- 2 nodes x 1 process: the spot case


@pytest.fixture(scope="module")
def spot_run(workdir, counting_s3):
    """Two simulated nodes; node 1's worker SIGKILLed at step 5; both launchers started again."""
    nodes = [make_node(workdir / "two-nodes", i) for i in (0, 1)]
    root = counting_s3.root("two-nodes")
    killed = wait_all(start_two_nodes(nodes, root, counting_s3, faults={1: f"{KILL}:all"}))
    assert checkpoints(root) == [2, 4]
    stored = resume_bytes(root)
    counting_s3.reset()
    for node in nodes:
        node.replaced()
    resumed = wait_all(start_two_nodes(nodes, root, counting_s3))
    reports = {node.index: read_report(counting_s3, root, node.client, stored) for node in nodes}
    return {
        "nodes": nodes,
        "root": root,
        "killed": killed,
        "resumed": resumed,
        "stored": stored,
        "reports": reports,
        "clients": counting_s3.clients(),
    }


@pytest.mark.slow
def test_spot_kill_of_one_node_then_both_restarted_finishes_bit_identical(spot_run, reference):
    killed, resumed = spot_run["killed"], spot_run["resumed"]
    # Node 1's worker died by SIGKILL at its fault point; node 0's worker failed with it.
    assert "Signal 9 (SIGKILL)" in killed[1].output and killed[1].returncode != EXIT_OK, killed[1].describe()
    assert killed[0].returncode != EXIT_OK and "step 4/6" in killed[0].output, killed[0].describe()
    for result in resumed:
        assert result.returncode == EXIT_OK, result.describe()
    assert resumed[0].resumed_from() == (RESUMED_FROM, 4), resumed[0].describe()
    assert_identical(reference, read_export(f"{spot_run['root']}/export"), total_steps=TOTAL_STEPS)


@pytest.mark.slow
def test_two_nodes_each_read_the_state_once(spot_run):
    stored, reports = spot_run["stored"], spot_run["reports"]
    assert spot_run["clients"] == {"node0", "node1"}, spot_run["clients"]
    for index, report in reports.items():
        print(f"2 nodes x 1 process, node {index}: {describe(report, stored)}")
    for index, report in reports.items():
        assert_read_once(report, stored, f"node {index}")
        assert report["checkpoint"] >= stored["checkpoint"], f"node {index} did not read the checkpoint itself"
        assert report["tokenized"] >= stored["tokenized"], f"node {index} did not read the tokenized data itself"
