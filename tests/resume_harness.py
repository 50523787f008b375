"""Helpers for tests/e2e/test_resume.py: start rmrun runs (1 process, or 2 under torchrun)
on a local or s3:// state, interrupt them, read their exports and compare them bit for bit.

Every run is a child process with its own session (process group), started from a
scratch working directory, with ``PYTHONWARNINGS=ignore`` and unbuffered output so the
log lines (``step N/T ...``, ``eval step N: ...``) can be watched as they come.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from rmrun.errors import (  # noqa: F401  (defined once)
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PREEMPTED,
    EXIT_UNUSABLE,
    EXIT_USAGE,
)

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "tests" / "assets" / "resume.toml"
SOURCE_TRAIN = REPO / "recipes" / "data" / "quickstart_train.jsonl"
SOURCE_EVAL = REPO / "recipes" / "data" / "quickstart_eval.jsonl"
TRAIN_PAIRS = 100
EVAL_PAIRS = 32
RUN_TIMEOUT = 300  # seconds for one rmrun process (a clean run takes ~15-25 s)

STEP_LINE = re.compile(r"^step (\d+)/(\d+) ", re.M)
RESUMED_LINE = re.compile(r"resumed from (ckpt-\d+): epoch (\d+), step (\d+), (\d+) pairs")


# ----------------------------------------------------------------- configurations


@dataclass(frozen=True)
class Config:
    """How a run is launched: number of processes and where its state lives."""

    nproc: int
    storage: str  # "local" or "s3"

    @property
    def name(self) -> str:
        return f"{self.nproc}proc-{self.storage}"

    @property
    def batch_size(self) -> int:
        # Pairs per process per step: 8 pairs per optimizer step either way, so both
        # world sizes run 13 steps per epoch (100 pairs), 26 in all.
        return 8 // self.nproc

    def __str__(self) -> str:  # pytest ids
        return self.name


ONE_LOCAL = Config(1, "local")
ONE_S3 = Config(1, "s3")
TWO_LOCAL = Config(2, "local")
TWO_S3 = Config(2, "s3")

# The schedule of the test recipe with 100 pairs and 8 pairs per optimizer step.
STEPS_PER_EPOCH = 13
TOTAL_STEPS = 26


def write_data(directory: Path) -> tuple[Path, Path]:
    """The first TRAIN_PAIRS / EVAL_PAIRS rows of the quickstart data, as the run's files."""
    directory.mkdir(parents=True, exist_ok=True)
    train, evaluation = directory / "train.jsonl", directory / "eval.jsonl"
    for source, target, n in ((SOURCE_TRAIN, train, TRAIN_PAIRS), (SOURCE_EVAL, evaluation, EVAL_PAIRS)):
        with open(source) as f:
            lines = [line for line in f if line.strip()][:n]
        assert len(lines) == n, f"{source} has fewer than {n} rows"
        target.write_text("".join(lines))
    return train, evaluation


# ----------------------------------------------------------------- runs


@dataclass
class RunDirs:
    """Where one run (and all its resumptions) keeps its state and export."""

    config: Config
    state: str
    export: str
    label: str

    @property
    def local_state(self) -> Path:
        assert self.config.storage == "local", "only a local state has a path"
        return Path(self.state)


@dataclass
class Result:
    returncode: int
    output: str  # stdout and stderr, interleaved
    argv: list = field(default_factory=list)
    faults: str = ""
    seconds: float = 0.0

    def steps_logged(self) -> list[int]:
        return [int(m.group(1)) for m in STEP_LINE.finditer(self.output)]

    def resumed_from(self) -> tuple[str, int] | None:
        """(checkpoint key, its step) this run resumed from, None if it started fresh."""
        m = RESUMED_LINE.search(self.output)
        return (m.group(1), int(m.group(3))) if m else None

    def describe(self) -> str:
        tail = "\n".join(self.output.splitlines()[-40:])
        return (
            f"rmrun exited {self.returncode} after {self.seconds:.1f}s (RMRUN_FAULTS={self.faults!r})\n"
            f"argv: {' '.join(map(str, self.argv))}\n--- last lines of output ---\n{tail}"
        )


class Child:
    """A running rmrun (or torchrun) process whose output is read line by line as it comes."""

    def __init__(self, argv: list, env: dict, cwd: Path, faults: str):
        self.argv, self.faults = argv, faults
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        self._lines: list[str] = []
        self._cond = threading.Condition()
        self._done = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._cond:
                self._lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self._done = True
            self._cond.notify_all()

    @property
    def output(self) -> str:
        with self._cond:
            return "".join(self._lines)

    def wait_for(self, pattern: str, timeout: float = RUN_TIMEOUT) -> re.Match:
        """Block until a line matches ``pattern``; fail if the process ends first."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self._lines[seen:]:
                    m = regex.search(line)
                    if m:
                        return m
                seen = len(self._lines)
                if self._done:
                    self.proc.wait()
                    raise AssertionError(f"the run ended before printing /{pattern}/:\n{self.result().describe()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    self.kill_group()
                    raise AssertionError(f"no line /{pattern}/ within {timeout}s:\n{self.result().describe()}")
                self._cond.wait(left)

    def send_signal(self, sig: int) -> None:
        """Signal the process we started (rmrun itself, or torchrun)."""
        self.proc.send_signal(sig)

    def kill_group(self) -> None:
        """SIGKILL the whole process group we started (the process and its workers)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def wait(self, timeout: float = RUN_TIMEOUT) -> Result:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_group()
            self.proc.wait()
            self._reader.join(timeout=10)
            raise AssertionError(f"rmrun did not finish within {timeout}s:\n{self.result().describe()}") from None
        # Whatever is left of the group (a torchrun worker after a SIGKILL of rank 0)
        # would hold the output pipe open.
        self.kill_group()
        self._reader.join(timeout=30)
        return self.result()

    def result(self) -> Result:
        return Result(
            returncode=self.proc.returncode if self.proc.returncode is not None else -999,
            output=self.output,
            argv=self.argv,
            faults=self.faults,
            seconds=time.monotonic() - self.started,
        )


class Harness:
    """Builds rmrun command lines for a Config and runs them."""

    def __init__(self, workdir: Path, s3_roots=None):
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.train, self.eval = write_data(workdir / "data")
        self.cwd = workdir / "cwd"
        self.cwd.mkdir(exist_ok=True)
        self._s3_roots = s3_roots  # zero-argument callable returning the s3_root fixture (started lazily)

    # --------------------------------------------------------- places

    def new_run(self, config: Config, label: str) -> RunDirs:
        """A fresh, empty state root and export location for ``config``."""
        unique = f"{label}-{config.name}-{uuid.uuid4().hex[:8]}"
        if config.storage == "local":
            base = self.workdir / "runs" / unique
            return RunDirs(config, state=str(base / "state"), export=str(base / "export"), label=label)
        assert self._s3_roots is not None, "an s3 configuration needs the s3_root fixture"
        root = self._s3_roots()(unique)
        return RunDirs(config, state=f"{root}/state", export=f"{root}/export", label=label)

    def copy_run(self, run: RunDirs, label: str) -> RunDirs:
        """A copy of a local run's state (a new root, a new export location)."""
        assert run.config.storage == "local"
        copy = self.new_run(run.config, label)
        shutil.copytree(run.state, copy.state, symlinks=True)
        return copy

    # --------------------------------------------------------- command lines

    def env(self, *, faults: str | None = None, trace: str | None = None) -> dict:
        env = dict(os.environ)  # carries the AWS_* variables of the s3 fixture
        env.update(PYTHONWARNINGS="ignore", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
        env.pop("RMRUN_FAULTS", None)
        env.pop("RMRUN_TRACE_PAIRS", None)
        if faults:
            env["RMRUN_FAULTS"] = faults
        if trace:
            env["RMRUN_TRACE_PAIRS"] = trace
        return env

    def argv(self, run: RunDirs, *, nproc: int | None = None, sets=(), command: str = "run") -> list:
        nproc = nproc or run.config.nproc
        overrides = [
            f"data.train={self.train}",
            f"data.eval={self.eval}",
            f"run.state={run.state}",
            f"output.dir={run.export}",
            f"schedule.batch_size={run.config.batch_size}",
            *sets,
        ]
        tail = [command, str(RECIPE), *(a for o in overrides for a in ("--set", o))]
        if nproc == 1:
            return [sys.executable, "-m", "rmrun", *tail]
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={nproc}",
            "--rdzv-backend=c10d",
            "--rdzv-endpoint=localhost:0",
            "-m",
            "rmrun",
            *tail,
        ]

    def start(
        self,
        run: RunDirs,
        *,
        faults: str | None = None,
        trace: str | None = None,
        nproc: int | None = None,
        sets=(),
        env: dict | None = None,
    ) -> Child:
        """``env``: variables to set in the run's environment beyond the harness's own."""
        return Child(
            self.argv(run, nproc=nproc, sets=sets),
            {**self.env(faults=faults, trace=trace), **(env or {})},
            self.cwd,
            faults or "",
        )

    def run(
        self,
        run: RunDirs,
        *,
        faults: str | None = None,
        trace: str | None = None,
        nproc: int | None = None,
        sets=(),
        expect: int | str | None = None,
        env: dict | None = None,
    ) -> Result:
        """Run to the end. ``expect``: an exit code, "killed" (a fault's SIGKILL) or None."""
        result = self.start(run, faults=faults, trace=trace, nproc=nproc, sets=sets, env=env).wait()
        if expect == "killed":
            assert_killed(result, nproc or run.config.nproc)
        elif expect is not None:
            assert result.returncode == expect, result.describe()
        return result

    def status(self, run: RunDirs) -> Result:
        argv = [sys.executable, "-m", "rmrun", "status", run.state]
        proc = subprocess.run(argv, env=self.env(), cwd=self.cwd, capture_output=True, text=True, timeout=120)
        return Result(proc.returncode, proc.stdout + proc.stderr, argv)


def assert_killed(result: Result, nproc: int) -> None:
    """A run ended by an injected SIGKILL: -9 for rmrun itself. Under torchrun the job
    fails (exit 1); torchrun names the first failure it saw, which may be rank 1 dying
    (gloo error, SIGABRT) rather than rank 0's SIGKILL, so only rank 0's silence is checked."""
    if nproc == 1:
        assert result.returncode == -signal.SIGKILL, result.describe()
    else:
        assert result.returncode not in (EXIT_OK, EXIT_USAGE, EXIT_PREEMPTED), result.describe()
        assert "ChildFailedError" in result.output, result.describe()
        assert "[rank0]: Traceback" not in result.output and "\nrmrun: " not in result.output, result.describe()


# ----------------------------------------------------------------- exports


@dataclass
class Export:
    tensors: dict
    metrics: bytes
    url: str
    evaluation: bytes | None = None  # eval.json

    def metric_lines(self) -> list[dict]:
        return [json.loads(line) for line in self.metrics.decode().splitlines()]


def _fs(url: str):
    import fsspec

    return fsspec.core.url_to_fs(url)


def read_export(url: str) -> Export:
    from safetensors.torch import load

    fs, path = _fs(url)
    path = path.rstrip("/")
    evaluation = fs.cat_file(f"{path}/eval.json") if fs.exists(f"{path}/eval.json") else None
    return Export(
        tensors=load(fs.cat_file(f"{path}/model.safetensors")),
        metrics=fs.cat_file(f"{path}/metrics.jsonl"),
        url=url,
        evaluation=evaluation,
    )


def assert_metrics_complete(export: Export, total_steps: int = TOTAL_STEPS) -> None:
    """metrics.jsonl holds every optimizer step exactly once, in order: 1..N."""
    steps = [line["step"] for line in export.metric_lines()]
    assert steps == list(range(1, total_steps + 1)), (
        f"{export.url}/metrics.jsonl: steps are {steps}, expected 1..{total_steps} each once"
    )


def differing_tensors(a: Export, b: Export) -> list[str]:
    """The tensors of two exports that differ by a bit (rmrun verify-resume's comparison)."""
    from rmrun.run.verify import differing_tensors

    assert set(a.tensors) == set(b.tensors), f"tensor names differ: {sorted(set(a.tensors) ^ set(b.tensors))}"
    return differing_tensors(a.tensors, b.tensors)


def assert_identical(
    reference: Export, got: Export, *, compare_eval: bool = True, total_steps: int = TOTAL_STEPS
) -> None:
    """Bit-identical weights (every tensor) and byte-identical metrics.jsonl, complete
    (steps 1..total_steps); also a byte-identical eval.json unless ``compare_eval`` is
    False (a run that changed eval.batch_size, which is allowed to change eval numbers)."""
    assert_metrics_complete(reference, total_steps)
    assert_metrics_complete(got, total_steps)
    bad = differing_tensors(reference, got)
    assert not bad, f"{len(bad)} of {len(reference.tensors)} tensors differ from the uninterrupted run: {bad[:5]}"
    if got.metrics != reference.metrics:
        first = next(i for i, (x, y) in enumerate(zip(reference.metric_lines(), got.metric_lines())) if x != y)
        raise AssertionError(
            f"metrics.jsonl differs from the uninterrupted run, first at line {first + 1}:\n"
            f"  uninterrupted: {reference.metric_lines()[first]}\n  resumed:       {got.metric_lines()[first]}"
        )
    if compare_eval:
        assert got.evaluation == reference.evaluation, "eval.json differs from the uninterrupted run"


# ----------------------------------------------------------------- state inspection


def committed_checkpoints(run: RunDirs) -> list[int]:
    """Steps of the committed (not quarantined) checkpoints in a run's state."""
    from rmrun.store import StateStore

    _clear_s3_cache()
    return [int(k[len("ckpt-") :]) for k in StateStore(run.state).committed_keys("ckpt-")]


def is_complete(run: RunDirs) -> bool:
    from rmrun.store import StateStore

    _clear_s3_cache()
    return StateStore(run.state).open_verified("export") is not None


def newest_checkpoint_attempt(run: RunDirs) -> tuple[str, Path]:
    """(key, attempt directory) of the newest committed checkpoint of a local state."""
    key = f"ckpt-{committed_checkpoints(run)[-1]:010d}"
    commit = json.loads((run.local_state / "states" / key / "COMMIT").read_text())
    return key, run.local_state / "states" / key / commit["attempt"]


def _clear_s3_cache() -> None:
    try:
        import s3fs
    except ImportError:
        return
    s3fs.S3FileSystem.clear_instance_cache()


# ----------------------------------------------------------------- pair traces


def read_trace(prefix: str) -> dict[int, dict]:
    """One run's RMRUN_TRACE_PAIRS files → {step: {"epoch": e, "pairs": [ids of all ranks]}}."""
    steps: dict[int, dict] = {}
    directory, base = os.path.split(prefix)
    for name in sorted(os.listdir(directory)):
        if not re.fullmatch(re.escape(base) + r"\.rank\d+", name):
            continue
        with open(os.path.join(directory, name)) as f:
            for line in f:
                record = json.loads(line)
                entry = steps.setdefault(record["step"], {"epoch": record["epoch"], "pairs": []})
                assert entry["epoch"] == record["epoch"], f"{name}: step {record['step']} in two epochs"
                entry["pairs"] += record["pairs"]
    return steps


def merge_traces(runs: list[dict[int, dict]]) -> dict[int, dict]:
    """The pairs of the steps that count, from the traces of successive runs of one state.

    A run resumes from a checkpoint at some step k and re-executes the steps after it;
    anything an earlier (killed) run traced after k was never committed. So, in run
    order: drop every merged step from the run's first traced step on, then add the
    run's steps (for each step, the trace of the LAST run that executed it counts).
    """
    merged: dict[int, dict] = {}
    for steps in runs:
        if not steps:
            continue
        first = min(steps)
        merged = {s: v for s, v in merged.items() if s < first}
        merged.update(steps)
    return merged
