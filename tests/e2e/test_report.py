"""``rmrun report`` on a killed-and-resumed run, local and on s3 (moto), opened in headless
Chromium; and ``rmrun score``/``eval`` on a state whose run has not exported yet (its newest
checkpoint), checked against the training-time evaluation at that checkpoint's step.

The run: 48 training pairs, 8 per optimizer step, 2 epochs (12 steps), a checkpoint and an
evaluation every 3 steps, SIGKILLed after step 5 (``kill@step:5``), so it resumes from the
checkpoint at step 3, then run again to the end. The page must load every figure in the
browser (a page with one figure removed is the negative control), mark the resume at step 3,
and screenshot as more than one colour. Also: a report from an export directory (through its
state, or from its own files when the state is gone), a run that was killed and not resumed,
a LoRA checkpoint, and the one-line errors.
"""

from __future__ import annotations

import json
import math
import os
import shutil

import pytest

from tests.helpers import child_env, rmrun, small_recipe

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Blocking uploads: the kill at step 5 must find checkpoint 3 committed.
SETTINGS = (
    "[schedule]\nbatch_size = 8\n[checkpoint]\ninterval_steps = 3\nasync_upload = false\n[eval]\ninterval_steps = 3\n"
)
KILL = "kill@step:5"
RESUME_STEP = 3  # the newest checkpoint before the kill (checked against the state below)
FIGURES = ("training.png", "throughput.png", "eval.png", "lengths.png", "rewards.png", "calibration.png")


def _killed_then_resumed(tmp_path, *sets: str, keep_killed: str | None = None) -> None:
    """Train, SIGKILL after step 5, resume to the end (a local state as the kill left it is
    copied to ``keep_killed`` first)."""
    recipe = small_recipe(tmp_path, train_pairs=48, eval_pairs=16, extra=SETTINGS)
    killed = rmrun("run", recipe, *sets, env=child_env(RMRUN_FAULTS=KILL))
    assert killed.returncode == -9, killed.stderr[-3000:]
    if keep_killed:
        shutil.copytree(tmp_path / "state", keep_killed)
    done = rmrun("run", recipe, *sets)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resumed from ckpt-{RESUME_STEP:010d}" in done.stdout


def _report(target: str, out) -> None:
    done = rmrun("report", target, "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{out}/index.html" in done.stdout


# ------------------------------------------------------------------ the browser


def _browser_or_skip():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is absent (`make test` installs it: apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is absent (pip install -e '.[test]' installs it)")
    return sync_playwright


def render(index_html: str, screenshot: str) -> dict:
    """Open the page in headless Chromium; every <img>'s load state, the page text, a screenshot."""
    sync_playwright = _browser_or_skip()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"file://{index_html}", wait_until="load")
            images = page.eval_on_selector_all(
                "img",
                "els => els.map(e => ({src: e.getAttribute('src'), complete: e.complete, width: e.naturalWidth}))",
            )
            text = page.inner_text("body")
            page.screenshot(path=screenshot, full_page=True)
        finally:
            browser.close()
    return {"images": images, "text": text}


def assert_not_blank(screenshot: str) -> None:
    from PIL import Image

    with Image.open(screenshot) as image:
        width, height = image.size
        assert width >= 1280 and height > 2000, image.size  # the whole page: figures, recipe, plan
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is None or len(colours) > 100, "the screenshot is (nearly) a single colour"


def assert_page_renders(out, *, resume_step: int) -> dict:
    shown = render(str(out / "index.html"), str(out.parent / f"{out.name}.png"))
    assert len(shown["images"]) >= len(FIGURES), shown["images"]
    assert sorted(i["src"] for i in shown["images"]) == sorted(FIGURES)
    for image in shown["images"]:
        assert image["complete"] and image["width"] > 0, image
    assert f"resumed at step {resume_step}" in shown["text"]
    assert_not_blank(str(out.parent / f"{out.name}.png"))
    return shown


# ------------------------------------------------------------------ tests


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    # The state as the kill left it (no export yet, newest checkpoint at RESUME_STEP) is kept.
    _killed_then_resumed(root, keep_killed=str(root / "killed-state"))
    return {
        "root": root,
        "state": str(root / "state"),
        "killed": str(root / "killed-state"),
        "eval_file": str(root / "eval.jsonl"),
    }


def test_report_of_a_resumed_local_run_renders_in_chromium(local_run):
    out = local_run["root"] / "page"
    _report(local_run["state"], out)
    assert sorted(os.listdir(out)) == sorted(["index.html", *FIGURES])
    shown = assert_page_renders(out, resume_step=RESUME_STEP)
    for expected in ("final eval accuracy", "ECE", "Recipe", "Plan", "total_steps", "interval_steps = 3"):
        assert expected in shown["text"], expected
    # Negative control: the same check fails on a page with a missing figure.
    broken = local_run["root"] / "broken"
    shutil.copytree(out, broken)
    os.remove(broken / "calibration.png")
    missing = render(str(broken / "index.html"), str(local_run["root"] / "broken.png"))
    assert [i["src"] for i in missing["images"] if not (i["complete"] and i["width"] > 0)] == ["calibration.png"]


@pytest.mark.slow  # two runs on the S3 server
def test_report_of_a_resumed_s3_run_renders_in_chromium(tmp_path, s3_root):
    root = s3_root("report")
    _killed_then_resumed(tmp_path, "--set", f"run.state={root}")
    out = tmp_path / "page"
    _report(root, out)
    shown = assert_page_renders(out, resume_step=RESUME_STEP)
    assert root in shown["text"]
    missing = rmrun("report", "s3://no-such-bucket-rmrun/run", "--out", str(tmp_path / "none"))
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1, missing.stderr[-2000:]
    assert "no-such-bucket-rmrun" in missing.stderr


def test_report_from_the_export_directory_uses_its_state_or_its_own_files(local_run):
    out = local_run["root"] / "from-export"
    export = os.path.join(local_run["state"], "export")
    _report(export, out)
    html = (out / "index.html").read_text()
    assert f"resumed at step {RESUME_STEP}" in html and "made from the state of the export" in html
    # An export whose state is gone: the curves and the final evaluation from its own files.
    orphan = local_run["root"] / "orphan-export"
    shutil.copytree(export, orphan)
    plan = json.loads((orphan / "plan.json").read_text())
    (orphan / "plan.json").write_text(json.dumps(dict(plan, state=str(local_run["root"] / "gone"))))
    out = local_run["root"] / "from-orphan"
    _report(str(orphan), out)
    assert sorted(os.listdir(out)) == ["eval.png", "index.html", "lengths.png", "training.png"]
    html = (out / "index.html").read_text()
    assert "made from the export alone" in html and "final eval accuracy" in html


def test_report_of_a_run_without_export_shows_its_newest_checkpoint(local_run):
    out = local_run["root"] / "killed-page"
    _report(local_run["killed"], out)
    html = (out / "index.html").read_text()
    assert "not complete" in html and f"newest checkpoint (ckpt-{RESUME_STEP:010d}" in html
    assert "resumed at step" not in html  # it was killed, never resumed


def test_eval_of_a_state_without_export_scores_its_newest_checkpoint(local_run):
    """The run was killed after step 5: ``rmrun eval STATE`` scores the checkpoint of step 3 and
    reproduces the evaluation the run made at step 3."""
    from rmrun.report.data import read_history
    from rmrun.store import StateStore

    out = local_run["root"] / "checkpoint-eval.json"
    done = rmrun("eval", local_run["killed"], local_run["eval_file"], "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"scoring its newest checkpoint (ckpt-{RESUME_STEP:010d}, step {RESUME_STEP})" in done.stderr
    _, evals, _ = read_history(StateStore(local_run["killed"]))
    at_checkpoint = evals[RESUME_STEP]
    report = json.loads(out.read_text())
    assert report["pairs"] == at_checkpoint["pairs"] == 16
    assert report["accuracy"] == at_checkpoint["accuracy"]
    for key in ("loss", "chosen_reward", "rejected_reward", "margin"):
        assert math.isclose(report[key], at_checkpoint[key], abs_tol=1e-5), key
    scored = local_run["root"] / "checkpoint-scores.jsonl"
    done = rmrun("score", local_run["killed"], local_run["eval_file"], "--out", str(scored))
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in scored.read_text().splitlines()]
    assert math.isclose(
        sum(line["chosen"] for line in lines) / len(lines), at_checkpoint["chosen_reward"], abs_tol=1e-5
    )


@pytest.mark.parametrize(
    "make,expected",
    [
        (lambda p: str(p / "nowhere"), "no such state or export directory"),
        (lambda p: str(p), "nothing recorded in this state yet"),
    ],
)
def test_a_missing_or_empty_state_is_a_one_line_error(tmp_path, make, expected):
    done = rmrun("report", make(tmp_path), "--out", str(tmp_path / "page"))
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr and expected in lines[0], lines


@pytest.mark.slow  # one more training run
def test_a_lora_checkpoint_scores_like_the_run_evaluated_it(tmp_path):
    """LoRA adapters live in the checkpoint under the base layers' names; the rebuilt model
    loads them strictly and gives the run's own evaluation at that step."""
    from rmrun.report.data import read_history
    from rmrun.store import StateStore

    recipe = small_recipe(tmp_path, train_pairs=48, eval_pairs=16, extra=SETTINGS + "[model.lora]\nr = 4\n")
    killed = rmrun("run", recipe, env=child_env(RMRUN_FAULTS=KILL))
    assert killed.returncode == -9, killed.stderr[-3000:]
    out = tmp_path / "eval.json"
    done = rmrun("eval", str(tmp_path / "state"), str(tmp_path / "eval.jsonl"), "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    at_checkpoint = read_history(StateStore(str(tmp_path / "state")))[1][RESUME_STEP]
    report = json.loads(out.read_text())
    for key in ("loss", "chosen_reward", "rejected_reward"):
        assert math.isclose(report[key], at_checkpoint[key], abs_tol=1e-5), key
