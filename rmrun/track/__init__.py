"""Experiment trackers: one tracker run per rmrun run, however often it is preempted.

``log.trackers`` names them (``"wandb"``, ``"mlflow"``: :data:`BACKENDS` maps a name to the
module that speaks to it, imported only when named). Only rank 0 talks to a tracker, and only
from the background thread of :class:`Trackers`: the training loop hands it a step's metrics
and goes on, so a tracker that is slow, down or refusing never slows or fails the training;
its first error is one warning line, and what it could not take is dropped.

One tracker run per rmrun run: the first start of a run stores a tracker run id in the state
(the ``trackers`` record); every later start, in any process on any machine, continues the
tracker run of that id. Each step is sent once: a resumed run replays the steps after its
checkpoint, and before sending anything the thread asks each tracker for the last step it
holds of each metric (what earlier starts sent, up to their last moment) and sends only the
later ones. The replayed steps' values are bit-identical to the ones first sent, so the
tracker's curves are the curves of a run that never stopped. A start killed before its
tracker had written what it was sent (W&B's writer dies with the process) loses nothing
either: each start first offers the tracker the whole committed history, of which the
tracker takes what it lacks.
"""

from __future__ import annotations

import importlib
import queue
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from rmrun.runtime.faults import fault_point
from rmrun.store.keys import TRACKERS_RECORD

if TYPE_CHECKING:
    from rmrun.recipe.schema import LogSection
    from rmrun.store import Lease, StateStore

# name -> the module whose ``Backend(options, run_name=...)`` speaks to that tracker
BACKENDS = {"wandb": "rmrun.track.wandb", "mlflow": "rmrun.track.mlflow"}

FINISH_SECONDS = 30.0  # at the end of a run, how long the trackers may take to be sent what is left
STOP_SECONDS = 3.0  # the same on a stop or a failure: the exit must stay within the stop budget


class Backend(Protocol):
    """One tracker. Called from the sender thread only, one call at a time."""

    name: str

    def open(self, *, run_id: str, config: dict, recipe_text: str) -> None:
        """Start or continue the tracker run ``run_id``; ``config`` is the flattened recipe."""

    def held(self) -> dict[str, int]:
        """The last step of each metric the tracker run holds already (``"*"``: of every metric)."""
        ...

    def send(self, rows: list[tuple[int, dict[str, float]]]) -> None:
        """Metrics at their steps, the steps in increasing order."""

    def attach(self, name: str, text: str) -> None:
        """A text file of the run (recipe.toml, plan.json, model_card.md)."""

    def note(self, values: dict[str, str]) -> None:
        """Facts about the run (where the export is)."""

    def close(self, *, outcome: str) -> None:
        """``outcome``: "finished", "preempted" (the run goes on in a later start) or "failed"."""


def tracker_run_id(store: StateStore, *, lease: Lease) -> str:
    """The tracker run id of the run in ``store``: made and recorded at its first start."""
    record = store.read_record(TRACKERS_RECORD)
    if record and record.get("run_id"):
        return str(record["run_id"])
    run_id = uuid.uuid4().hex[:16]  # W&B takes [a-z0-9] ids; MLflow finds the run by a tag of it
    store.write_record(TRACKERS_RECORD, {"run_id": run_id}, lease=lease)
    return run_id


def make_backend(name: str, log: LogSection, *, run_name: str) -> Backend:
    module = importlib.import_module(BACKENDS[name])
    return module.Backend(getattr(log, name), run_name=run_name)


class Trackers:
    """Rank 0's trackers, fed by the run and sent to from one background thread.

    :meth:`log`, :meth:`attach` and :meth:`note` only queue; :meth:`close` waits at most
    ``seconds`` for the queue to be sent, then leaves the rest (and says how much)."""

    def __init__(
        self,
        backends: list[Backend],
        *,
        run_id: str,
        config: dict,
        recipe_text: str,
        warn: Callable[[str], None],
    ):
        self.backends = backends
        self.run_id = run_id
        self.warn = warn
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self.pending = 0  # events queued and not yet handled (the thread and close share it)
        self.lock = threading.Lock()
        self.broken: set[str] = set()  # trackers that could not be opened this start: nothing is sent to them
        self.warned: set[str] = set()
        self.held: dict[str, dict[str, int]] = {}
        self.thread = threading.Thread(target=self._run, args=(config, recipe_text), name="rmrun-trackers", daemon=True)
        self.thread.start()

    # ------------------------------------------------------------------ the run's side

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Metrics at optimizer step ``step`` (a tracker that holds them already is not sent them)."""
        self._put(("log", step, dict(metrics)))

    def log_history(self, metrics: list[dict], evals: list[dict]) -> None:
        """A resumed run's history so far (its steps' metric lines and its evals), in step order:
        what a tracker lost when an earlier start was killed before it sent them is sent now."""
        rows = [(line["step"], 0, numeric(line, prefix="train", skip=("step",))) for line in metrics]
        rows += [(result["step"], 1, numeric(result, prefix="eval", skip=("step",))) for result in evals]
        for step, _, values in sorted(rows, key=lambda row: row[:2]):
            self.log(step, values)

    def attach(self, name: str, text: str) -> None:
        self._put(("attach", name, text))

    def note(self, values: dict[str, str]) -> None:
        self._put(("note", values))

    def close(self, *, outcome: str, seconds: float | None = None) -> None:
        """Send what is queued (at most ``seconds``; by default ``FINISH_SECONDS`` when the run
        finished, ``STOP_SECONDS`` otherwise), then close each tracker run with ``outcome``."""
        if seconds is None:
            seconds = FINISH_SECONDS if outcome == "finished" else STOP_SECONDS
        self._put(("close", outcome))
        self.thread.join(timeout=seconds)
        if self.thread.is_alive():
            left = max(self.pending - 1, 0)
            names = ", ".join(b.name for b in self.backends if b.name not in self.broken)
            self.warn(
                f"the trackers ({names}) did not take the run's last {left} updates within {seconds:.0f} s; "
                "they are dropped (metrics.jsonl has every step)"
            )

    def _put(self, event: tuple) -> None:
        with self.lock:
            self.pending += 1
        self.events.put(event)

    # ------------------------------------------------------------------ the thread

    def _run(self, config: dict, recipe_text: str) -> None:
        for backend in self.backends:
            try:
                backend.open(run_id=self.run_id, config=config, recipe_text=recipe_text)
                self.held[backend.name] = dict(backend.held())
            except Exception as e:  # noqa: BLE001 - a tracker never fails the run
                self.broken.add(backend.name)
                self._warn_once(backend, "could not be opened", e)
        fault_point("trackers_open")
        while True:
            event = self.events.get()
            batch = [event]
            while event[0] == "log":  # send the steps queued meanwhile together
                try:
                    event = self.events.get_nowait()
                except queue.Empty:
                    break
                batch.append(event)
            self._handle(batch)
            with self.lock:
                self.pending -= len(batch)
            if batch[-1][0] == "close":
                return

    def _handle(self, batch: list[tuple]) -> None:
        rows = [(e[1], e[2]) for e in batch if e[0] == "log"]
        for backend in self.backends:
            if backend.name in self.broken:
                continue
            try:
                new = self._new_rows(backend.name, rows)
                if new:
                    backend.send(new)
                for event in batch:
                    if event[0] == "attach":
                        backend.attach(event[1], event[2])
                    elif event[0] == "note":
                        backend.note(event[1])
                    elif event[0] == "close":
                        backend.close(outcome=event[1])
            except Exception as e:  # noqa: BLE001 - a tracker never fails the run
                self._warn_once(backend, "failed", e)

    def _new_rows(self, name: str, rows: list[tuple[int, dict[str, float]]]) -> list[tuple[int, dict[str, float]]]:
        """The metrics of ``rows`` the tracker does not hold yet; what is returned counts as held."""
        held = self.held.setdefault(name, {})
        every = held.get("*", -1)
        out = []
        for step, metrics in rows:
            fresh = {k: v for k, v in metrics.items() if step > max(held.get(k, -1), every)}
            if fresh:
                out.append((step, fresh))
                held.update(dict.fromkeys(fresh, step))
        return out

    def _warn_once(self, backend: Backend, what: str, error: Exception) -> None:
        if backend.name in self.warned:
            return
        self.warned.add(backend.name)
        reason = f"{type(error).__name__}: {error}".splitlines()[0][:300]
        self.warn(f"the {backend.name} tracker {what} ({reason}); the run goes on without it")


def open_trackers(
    log: LogSection,
    *,
    run_name: str,
    store: StateStore,
    lease: Lease,
    config: dict,
    recipe_text: str,
    warn: Callable[[str], None],
) -> Trackers | None:
    """Rank 0: the trackers ``log.trackers`` names, opening in the background (None: none named)."""
    if not log.trackers:
        return None
    backends = [make_backend(name, log, run_name=run_name) for name in log.trackers]
    run_id = tracker_run_id(store, lease=lease)
    return Trackers(backends, run_id=run_id, config=config, recipe_text=recipe_text, warn=warn)


def numeric(values: dict, *, prefix: str, skip: tuple[str, ...] = ()) -> dict[str, float]:
    """The numbers of ``values`` (bools and None left out), named ``prefix/key``."""
    return {
        f"{prefix}/{k}": float(v)
        for k, v in values.items()
        if k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def now_ms() -> int:
    return int(time.time() * 1000)
