"""The tracker sender (rmrun.track.Trackers) against a backend of rmrun's own Backend protocol
that records what it is given: each step sent once against what the tracker holds, the
history offered in step order, a failing or slow tracker never failing or holding up the
caller; the tracker run id kept in the state; the recipe checks; the W&B record-file reader
on files built by hand to its format (chunks across blocks, a file cut short)."""

from __future__ import annotations

import struct
import threading
import time

import pytest

from rmrun.recipe import RecipeError, load_recipe
from rmrun.recipe.validate import tracker_package_problems
from rmrun.store import StateStore
from rmrun.store.keys import TRACKERS_RECORD
from rmrun.track import Trackers, tracker_run_id
from tests.helpers import small_recipe


class Recording:
    """A tracker that keeps what it is sent; ``held`` is what an earlier start left in it."""

    def __init__(self, name="rec", *, held=None, fail_open=False, fail_send=False, block=None):
        self.name = name
        self._held = held or {}
        self.fail_open, self.fail_send, self.block = fail_open, fail_send, block
        self.sent: list[tuple[int, dict]] = []
        self.attached: dict[str, str] = {}
        self.notes: dict[str, str] = {}
        self.outcome = None
        self.opened_with = None

    def open(self, *, run_id, config, recipe_text):
        if self.fail_open:
            raise ConnectionError("refused")
        self.opened_with = (run_id, config, recipe_text)

    def held(self):
        return self._held

    def send(self, rows):
        if self.block is not None:
            self.block.wait()
        if self.fail_send:
            raise ConnectionError("down")
        self.sent += rows

    def attach(self, name, text):
        self.attached[name] = text

    def note(self, values):
        self.notes.update(values)

    def close(self, *, outcome):
        self.outcome = outcome


def _trackers(*backends, warnings=None):
    warn = warnings.append if warnings is not None else lambda message: None
    return Trackers(list(backends), run_id="abc", config={"run.name": "x"}, recipe_text="[run]", warn=warn)


def test_only_the_steps_a_tracker_does_not_hold_are_sent_each_once():
    fresh, resumed = Recording("fresh"), Recording("resumed", held={"train/loss": 5, "eval/accuracy": 4})
    trackers = _trackers(fresh, resumed)
    for step in range(1, 9):
        trackers.log(step, {"train/loss": 1.0 / step})
    trackers.log(4, {"eval/accuracy": 0.5})  # held by "resumed"
    trackers.log(8, {"eval/accuracy": 0.75})
    trackers.log(8, {"eval/accuracy": 0.75})  # offered twice in one start: sent once
    trackers.close(outcome="finished")
    assert [(s, r) for s, r in fresh.sent if "train/loss" in r] == [(s, {"train/loss": 1.0 / s}) for s in range(1, 9)]
    assert [s for s, r in fresh.sent if "eval/accuracy" in r] == [4, 8]
    assert [s for s, r in resumed.sent if "train/loss" in r] == [6, 7, 8]
    assert [s for s, r in resumed.sent if "eval/accuracy" in r] == [8]
    assert fresh.outcome == resumed.outcome == "finished"
    assert fresh.opened_with == ("abc", {"run.name": "x"}, "[run]")


def test_a_tracker_resumed_past_a_step_for_every_metric_is_sent_none_before_it():
    online = Recording(held={"*": 6})
    trackers = _trackers(online)
    for step in range(1, 9):
        trackers.log(step, {"train/loss": float(step), "train/lr": 0.1})
    trackers.close(outcome="finished")
    assert [s for s, _ in online.sent] == [7, 8]


def test_the_history_is_offered_in_step_order_train_before_eval():
    backend = Recording()
    trackers = _trackers(backend)
    metrics = [{"step": s, "epoch": 0, "loss": float(s), "note": "x", "flag": True} for s in (1, 2, 3, 4)]
    evals = [{"step": 2, "accuracy": 0.5}, {"step": 4, "accuracy": 0.7}]
    trackers.log_history(metrics, evals)
    trackers.close(outcome="finished")
    assert backend.sent == [
        (1, {"train/epoch": 0.0, "train/loss": 1.0}),
        (2, {"train/epoch": 0.0, "train/loss": 2.0}),
        (2, {"eval/accuracy": 0.5}),
        (3, {"train/epoch": 0.0, "train/loss": 3.0}),
        (4, {"train/epoch": 0.0, "train/loss": 4.0}),
        (4, {"eval/accuracy": 0.7}),
    ]


def test_a_tracker_that_cannot_be_opened_costs_one_warning_and_the_others_go_on():
    warnings: list[str] = []
    broken, working = Recording("broken", fail_open=True), Recording("working")
    trackers = _trackers(broken, working, warnings=warnings)
    for step in range(1, 4):
        trackers.log(step, {"train/loss": 1.0})
    trackers.attach("plan.json", "{}")
    trackers.close(outcome="preempted")
    assert warnings == ["the broken tracker could not be opened (ConnectionError: refused); the run goes on without it"]
    assert broken.sent == [] and broken.outcome is None
    assert [s for s, _ in working.sent] == [1, 2, 3] and working.attached == {"plan.json": "{}"}
    assert working.outcome == "preempted"


def test_a_tracker_that_fails_to_send_warns_once_and_is_still_given_the_rest():
    warnings: list[str] = []
    failing = Recording("flaky", fail_send=True)
    trackers = _trackers(failing, warnings=warnings)
    for step in range(1, 20):
        trackers.log(step, {"train/loss": 1.0})
        time.sleep(0.001)
    trackers.attach("model_card.md", "card")
    trackers.note({"export": "/x"})
    trackers.close(outcome="finished")
    assert len(warnings) == 1 and "the flaky tracker failed (ConnectionError: down)" in warnings[0], warnings
    assert failing.attached == {"model_card.md": "card"} and failing.notes == {"export": "/x"}


def test_a_tracker_that_hangs_never_holds_up_the_run_and_close_gives_up_in_time():
    warnings: list[str] = []
    gate = threading.Event()
    hung = Recording("hung", block=gate)
    trackers = _trackers(hung, warnings=warnings)
    started = time.monotonic()
    for step in range(1, 1001):
        trackers.log(step, {"train/loss": 1.0})
    assert time.monotonic() - started < 1.0, "log() waited for the tracker"
    trackers.close(outcome="finished", seconds=0.3)
    assert time.monotonic() - started < 2.0
    assert len(warnings) == 1 and "did not take the run's last" in warnings[0] and "dropped" in warnings[0], warnings
    gate.set()
    trackers.thread.join(timeout=5)


def test_the_tracker_run_id_is_made_at_the_first_start_and_kept(tmp_path):
    store = StateStore(str(tmp_path / "state"))
    lease = store.acquire_lease(holder="test")
    first = tracker_run_id(store, lease=lease)
    assert store.read_record(TRACKERS_RECORD) == {"run_id": first}
    assert tracker_run_id(store, lease=lease) == first
    other = StateStore(str(tmp_path / "other"))
    assert tracker_run_id(other, lease=other.acquire_lease(holder="test")) != first  # another run, another id


def test_recipe_checks_of_the_trackers(tmp_path, monkeypatch):
    recipe = small_recipe(tmp_path)
    with pytest.raises(RecipeError, match=r"\[log\]\.trackers: 'wandb' is named more than once"):
        load_recipe(recipe, overrides=['log.trackers=["wandb", "wandb"]'])
    with pytest.raises(RecipeError, match=r'\[log.mlflow\]\.tags: \'team\' is not "key=value"'):
        load_recipe(recipe, overrides=['log.trackers=["mlflow"]', 'log.mlflow.tags=["team"]'])
    with pytest.raises(RecipeError, match=r"'mlflo' is not one of 'wandb', 'mlflow' \(did you mean \"mlflow\"\?\)"):
        load_recipe(recipe, overrides=['log.trackers=["mlflo"]'])
    loaded = load_recipe(recipe, overrides=['log.trackers=["wandb", "mlflow"]', 'log.mlflow.tags=["team=rm"]'])
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    assert tracker_package_problems(loaded) == [
        '[log].trackers: "mlflow" needs the mlflow package, which is not installed: pip install "rmrun[mlflow]"'
    ]


# ----------------------------------------------------------------- the W&B record file


def _chunk(kind: int, data: bytes) -> bytes:
    return struct.pack("<IHB", 0, len(data), kind) + data  # the checksum is not read


def _history_record(step: int, **values) -> bytes:
    import json

    from wandb.proto import wandb_internal_pb2

    record = wandb_internal_pb2.Record()
    record.history.step.num = step
    for key, value in values.items():
        item = record.history.item.add()
        item.key, item.value_json = key, json.dumps(value)
    item = record.history.item.add()
    item.key, item.value_json = "_step", str(step)
    return record.SerializeToString()


def _record_file(records: list[bytes]) -> bytes:
    """LevelDB log format: records cut into chunks at 32 KiB block edges, short tails padded."""
    from rmrun.track.records import BLOCK, FIRST, FULL, HEADER, LAST, MIDDLE

    out = bytearray(HEADER)
    for data in records:
        first = True
        while True:
            room = BLOCK - len(out) % BLOCK
            if room < 7:
                out += b"\0" * room
                continue
            piece, data = data[: room - 7], data[room - 7 :]
            kind = (FULL if first else LAST) if not data else (FIRST if first else MIDDLE)
            out += _chunk(kind, piece)
            first = False
            if not data:
                break
    return bytes(out)


def test_the_record_reader_reads_records_across_blocks_and_stops_at_a_cut(tmp_path):
    pytest.importorskip("wandb")
    from rmrun.track.records import held_steps, history

    big = "x" * 50_000  # a record over one block: FIRST, MIDDLE..., LAST
    records = [_history_record(s, **{"train/loss": 1.0 / s}) for s in range(1, 200)]
    records.insert(100, _history_record(100, **{"eval/text": big}))
    path = tmp_path / "run-abc.wandb"
    path.write_bytes(_record_file(records))
    rows = list(history(str(path)))
    assert [s for s, r in rows if "train/loss" in r] == list(range(1, 200))
    assert [r["eval/text"] for s, r in rows if "eval/text" in r] == [big]
    assert all(not k.startswith("_") for _, r in rows for k in r)
    assert held_steps(str(path)) == {"train/loss": 199, "eval/text": 100}
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) - 10])  # the writer killed mid-record
    assert [s for s, _ in history(str(path))][-1] == 198
    path.write_bytes(b"not a record file")
    with pytest.raises(ValueError, match="not a W&B record file"):
        list(history(str(path)))
