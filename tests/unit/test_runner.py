"""The run session and the step graph with fake steps: what runs, what is recorded,
what is closed, and which graphs are refused. No model, no subprocess."""

from __future__ import annotations

from pathlib import Path

import pytest

from rmrun.recipe import load_recipe
from rmrun.run import graph
from rmrun.run.context import RunContext
from rmrun.run.graph import GraphError, Step, check_graph, pending_steps
from rmrun.run.runner import GraphWalk, RunSession
from rmrun.runtime.dist import Rank
from rmrun.store import StateStore
from rmrun.store.keys import EXPORT_KEY, STEP_RECORDS

QUICKSTART = str(Path(__file__).resolve().parents[2] / "recipes" / "quickstart.toml")
RANK = Rank(rank=0, world_size=1, local_rank=0, cuda=False)
ALL_STEPS = ["tokenize", "boost", "train/epoch-0", "train/epoch-1", "evaluate", "save"]

ran: list[str] = []  # the steps the fakes ran, in order
fail_at: set[str] = set()  # the steps that raise
hooks_made: list[FakeHooks] = []


class FakeHooks:
    def __init__(self, *, fail_to_close: bool = False):
        self.closed = 0
        self.fail_to_close = fail_to_close

    def close(self) -> None:
        self.closed += 1
        if self.fail_to_close:
            raise OSError("cannot close")


class StepFailed(Exception):
    pass


def _commit(ctx: RunContext, step: Step) -> None:
    ran.append(step.name)
    if step.name in fail_at:
        raise StepFailed(f"{step.name} failed")
    if step.persistent and ctx.store.open_verified(step.produces) is None:
        staged = ctx.stage(step.produces, meta={})
        staged.write_bytes("done.json", b"{}")
        staged.commit()


def fake_tokenize(ctx: RunContext, step: Step, **sections) -> None:
    ctx.tokenizer, ctx.data = "tokenizer", {"train": list(range(48))}
    _commit(ctx, step)


def fake_boost(ctx: RunContext, step: Step, **sections) -> None:
    assert ctx.data is not None
    ctx.set_plan(num_pairs=len(ctx.data["train"]))
    ctx.boosted, ctx.train_state = "boosted", "train state"
    _commit(ctx, step)


def fake_train_epoch(ctx: RunContext, step: Step, **sections) -> None:
    if ctx.trainer is None:
        ctx.trainer = "trainer"
    if ctx.hooks is None:
        ctx.hooks = FakeHooks(fail_to_close="close" in fail_at)
        hooks_made.append(ctx.hooks)
    _commit(ctx, step)


def fake_step(ctx: RunContext, step: Step, **sections) -> None:
    _commit(ctx, step)


def gives_nothing(ctx: RunContext, step: Step, **sections) -> None:
    ran.append(step.name)


def gives_the_tokenizer(ctx: RunContext, step: Step, **sections) -> None:
    ctx.tokenizer = "tokenizer"


@pytest.fixture(autouse=True)
def fake_kinds(monkeypatch):
    here = __name__
    monkeypatch.setattr(
        graph,
        "STEP_KINDS",
        {
            "tokenize": f"{here}:fake_tokenize",
            "boost": f"{here}:fake_boost",
            "train_epoch": f"{here}:fake_train_epoch",
            "evaluate": f"{here}:fake_step",
            "save": f"{here}:fake_step",
            "nothing": f"{here}:gives_nothing",
            "tokenizer": f"{here}:gives_the_tokenizer",
        },
    )
    ran.clear()
    fail_at.clear()
    hooks_made.clear()


def _session(root: str) -> RunSession:
    return RunSession(QUICKSTART, load_recipe(QUICKSTART, overrides=[f"run.state={root}"]), rank=RANK)


def _records(root: str) -> dict[str, dict]:
    return {r["name"]: r for r in StateStore(root).read_records(STEP_RECORDS).values()}


def _context(root: str) -> RunContext:
    store = StateStore(root)
    return RunContext(
        store=store,
        lease=store.acquire_lease(holder="test"),
        rank=RANK,
        recipe_path="test",
        recipe_text="",
        identity={"fingerprint": "test"},
    )


def test_a_fresh_run_runs_every_step_records_it_done_and_closes_everything(tmp_path):
    root = str(tmp_path / "state")
    _session(root).run()
    assert ran == ALL_STEPS
    records = _records(root)
    assert [records[name]["state"] for name in ALL_STEPS] == ["done"] * len(ALL_STEPS)
    assert [records[name]["attempts"] for name in ALL_STEPS] == [1] * len(ALL_STEPS)
    assert [records[name]["order"] for name in ALL_STEPS] == list(range(len(ALL_STEPS)))
    assert StateStore(root).open_verified(EXPORT_KEY) is not None
    assert [h.closed for h in hooks_made] == [1]
    assert StateStore(root).holder_alive() is False


def test_a_complete_run_runs_nothing(tmp_path, capsys):
    root = str(tmp_path / "state")
    _session(root).run()
    ran.clear()
    _session(root).run()
    assert ran == []
    assert "run quickstart is complete" in capsys.readouterr().out
    assert StateStore(root).holder_alive() is False


def test_a_failing_step_is_recorded_and_the_hooks_and_lease_are_closed(tmp_path):
    root = str(tmp_path / "state")
    fail_at.add("train/epoch-1")
    with pytest.raises(StepFailed, match="train/epoch-1 failed"):
        _session(root).run()
    records = _records(root)
    assert records["train/epoch-1"]["state"] == "failed"
    assert records["train/epoch-1"]["attempts"] == 1
    assert records["train/epoch-1"]["error"] == "StepFailed: train/epoch-1 failed"
    assert records["train/epoch-0"]["state"] == "done"
    # what was left is recorded up front, so that status shows it
    assert records["evaluate"] == {
        "name": "evaluate",
        "order": records["evaluate"]["order"],
        "state": "pending",
        "attempts": 0,
    }
    assert [h.closed for h in hooks_made] == [1]
    assert StateStore(root).holder_alive() is False


def test_a_resume_skips_done_steps_and_runs_the_needed_ones_again(tmp_path, capsys):
    root = str(tmp_path / "state")
    fail_at.add("evaluate")
    with pytest.raises(StepFailed):
        _session(root).run()
    ran.clear()
    fail_at.clear()
    _session(root).run()
    # Every epoch is done, but evaluate needs the last, which needs the first (the trainer),
    # which need boost and tokenize: all run again (loading what they committed).
    assert ran == ALL_STEPS
    assert "done tokenize, train/epoch-0, train/epoch-1" in capsys.readouterr().out
    records = _records(root)
    assert records["evaluate"]["state"] == "done" and records["evaluate"]["attempts"] == 2
    assert records["save"]["attempts"] == 1
    assert records["tokenize"]["attempts"] == 2


def test_an_error_closing_does_not_hide_the_step_error(tmp_path):
    root = str(tmp_path / "state")
    fail_at.update({"save", "close"})
    with pytest.raises(StepFailed):
        _session(root).run()
    assert StateStore(root).holder_alive() is False


def test_an_error_closing_a_successful_run_is_raised_after_the_lease_is_released(tmp_path):
    root = str(tmp_path / "state")
    fail_at.add("close")
    with pytest.raises(OSError, match="cannot close"):
        _session(root).run()
    assert StateStore(root).holder_alive() is False


def test_pending_steps_adds_what_undone_steps_need():
    steps = graph.build_graph(num_epochs=3, tokenize_key="tokenize-x", has_eval=False)
    names = [s.name for s in pending_steps(steps, done={"tokenize", "train/epoch-0", "train/epoch-1"})]
    assert names == ["tokenize", "boost", "train/epoch-0", "train/epoch-1", "train/epoch-2", "save"]
    assert pending_steps(steps, done={s.name for s in steps if s.persistent}) == []


def test_the_shipped_graph_adds_up():
    for has_eval in (True, False):
        check_graph(graph.build_graph(num_epochs=2, tokenize_key="tokenize-x", has_eval=has_eval))


def test_a_step_that_takes_what_no_needed_step_gives_is_refused():
    steps = [
        Step("a", "tokenizer", gives=("tokenizer",)),
        Step("b", "nothing"),
        Step("c", "nothing", needs=("b",), takes=("tokenizer",)),
    ]
    with pytest.raises(GraphError, match="step c takes 'tokenizer', which no step it needs gives"):
        check_graph(steps)
    check_graph([*steps[:2], Step("c", "nothing", needs=("b", "a"), takes=("tokenizer",))])


def test_two_givers_of_one_field_are_refused():
    steps = [Step("a", "tokenizer", gives=("tokenizer",)), Step("b", "tokenizer", needs=("a",), gives=("tokenizer",))]
    with pytest.raises(GraphError, match="steps a and b both give 'tokenizer'"):
        check_graph(steps)


def test_a_need_that_is_not_an_earlier_step_is_refused():
    with pytest.raises(GraphError, match="step a needs 'b', which is not an earlier step"):
        check_graph([Step("a", "nothing", needs=("b",)), Step("b", "nothing")])
    with pytest.raises(GraphError, match="unknown kind 'bogus'"):
        check_graph([Step("a", "bogus")])


def test_a_step_that_does_not_set_what_it_gives_fails(tmp_path):
    ctx = _context(str(tmp_path / "state"))
    walk = GraphWalk(ctx, [Step("a", "nothing", gives=("tokenizer",))], sections={})
    with pytest.raises(GraphError, match="step a did not set tokenizer, which it gives"):
        walk.run_step(walk.steps[0])
    assert ctx.read_record("a")["state"] == "failed"


def test_a_step_that_sets_what_it_does_not_give_fails(tmp_path):
    ctx = _context(str(tmp_path / "state"))
    walk = GraphWalk(ctx, [Step("a", "tokenizer")], sections={})
    with pytest.raises(GraphError, match="step a set tokenizer, which it does not give"):
        walk.run_step(walk.steps[0])


def test_a_graph_naming_a_field_the_context_lacks_is_refused(tmp_path):
    ctx = _context(str(tmp_path / "state"))
    with pytest.raises(GraphError, match="names artifacts, not fields the run context hands off"):
        GraphWalk(ctx, [Step("a", "nothing", gives=("artifacts",))], sections={})


def test_step_records_count_attempts(tmp_path):
    ctx = _context(str(tmp_path / "state"))
    walk = GraphWalk(ctx, [Step("a", "nothing")], sections={})
    walk.run_step(walk.steps[0])
    walk.run_step(walk.steps[0])
    record = ctx.read_record("a")
    assert (record["state"], record["attempts"], record["order"]) == ("done", 2, 0)
