"""``rmrun report STATE_OR_EXPORT [--out DIR]``: one HTML page about a run, from its state alone.

The page is ``index.html`` beside the PNG figures it shows (relative links, inline CSS, no
script, nothing fetched from elsewhere), so the directory can be copied, uploaded or opened
from a bucket as it is, and each figure can be used on its own. What it shows and where each
number comes from: :mod:`rmrun.report.data`; the figures: :mod:`rmrun.report.plots`.
"""

from __future__ import annotations

import datetime
import html
import json
import os
import tempfile

from rmrun.report.data import ReportError
from rmrun.serve.exported import EVAL_KEYS

MAX_CPU_SCORING_BYTES = 2 * 2**30  # "auto" scores the eval pairs on CPU up to this much weights


def _is_export(url: str) -> bool:
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    return fs.exists(f"{path.rstrip('/')}/rmrun.json")


def _open_state(target: str):
    """(store, how it was found): a state root; the state a recipe names; or the state an
    export came from (store None when that state is gone)."""
    from rmrun.store import StateStore, StoreError
    from rmrun.store.keys import IDENTITY_KEY

    if _is_export(target):
        import fsspec

        with fsspec.open(f"{target.rstrip('/')}/plan.json") as f:
            url = json.load(f).get("state")
        try:
            store = StateStore(url)
            found = store.open_unverified(IDENTITY_KEY) is not None
        except (OSError, StoreError, TypeError):
            found = False
        return (store if found else None), f"made from the state of the export {target}: {url}"
    if target.endswith(".toml") and "://" not in target and os.path.isfile(target):
        from rmrun.recipe import load_recipe

        target = load_recipe(target).state_url
    if "://" not in target and not os.path.isdir(target):
        raise ReportError(f"{target}: no such state or export directory")
    store = StateStore(target)
    store.check_reachable()
    return store, None


def _should_score(store, record, mode: str) -> tuple[bool, str]:
    """Whether to score the eval pairs with the final model, and the page's words if not."""
    if mode == "no":
        return False, "not computed (--rewards no)"
    if record.eval_lengths is None:
        return False, "not computed: the run has no eval set"
    if mode == "yes":
        return True, ""
    from rmrun.report.data import model_weight_bytes

    size = model_weight_bytes(store)
    if size is None:
        return False, "not computed: the state holds no checkpoint and no export yet"
    import torch

    if size > MAX_CPU_SCORING_BYTES and not torch.cuda.is_available():
        return False, (
            f"not computed: {size / 2**30:.1f} GiB of weights and no GPU here; pass --rewards yes to "
            "score the eval pairs anyway"
        )
    return True, ""


def build(target: str, *, rewards: str = "auto"):
    """(record, scored or None, note on the rewards) for a state root or an export."""
    from rmrun.report.data import read_export_files, read_state, score_eval_pairs

    store, how = _open_state(target)
    if store is None:
        return read_export_files(target), None, "not computed: the state of this export was not found"
    record = read_state(store)
    if how:
        record.notes.append(how)
    score, note = _should_score(store, record, rewards)
    scored = None
    if score:
        import torch

        scored = score_eval_pairs(store, record, device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
        note = "" if scored is not None else "not computed: no final model or eval set in the state"
    return record, scored, note


# ------------------------------------------------------------------ the page


def _figures(record, scored, directory: str) -> list[tuple[str, str]]:
    """Draw every figure there is data for into ``directory``; [(file name, caption)]."""
    from rmrun.report import plots
    from rmrun.report.data import length_baseline

    model_buckets = (record.final or {}).get("accuracy_by_length") or []
    baseline = length_baseline(record.eval_lengths) if record.eval_lengths is not None else None
    made = []
    for name, fig, caption in (
        (
            "training.png",
            plots.training_curves(record),
            "Training metrics per optimizer step (the mean over the "
            "step's pairs). Grey dotted lines: epoch ends; red dashed lines: resumes, at the step training took up from.",
        ),
        (
            "throughput.png",
            plots.throughput(record),
            "Pairs and tokens (chosen + rejected, padding excluded) per "
            "second of wall-clock time between consecutive checkpoints of one process.",
        ),
        (
            "eval.png",
            plots.eval_curves(record),
            "Evaluations on the eval set during training; the dash-dotted line is the longer-response-wins baseline.",
        ),
        (
            "lengths.png",
            plots.length_buckets(model_buckets, baseline),
            "Final evaluation: accuracy by the token "
            "count of the longer response, against the longer-response-wins baseline in the same buckets.",
        ),
        (
            "rewards.png",
            plots.reward_histograms(scored),
            f"Rewards of the eval pairs scored by {scored.model}." if scored else "",
        ),
        (
            "calibration.png",
            plots.calibration_curve(scored),
            "Calibration of sigmoid(r_chosen - r_rejected) over "
            "10 bins, each pair counted both ways (as rmrun eval reports it)."
            if scored
            else "",
        ),
    ):
        if fig is not None:
            plots.save(fig, os.path.join(directory, name))
            made.append((name, caption))
    return made


def _table(rows) -> str:
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>{body}</table>"


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else ("—" if value is None else str(value))


def _summary(record, scored) -> list:
    final = record.final or {}
    rows = [
        ("source", record.source),
        ("status", "complete" if record.complete else "not complete"),
        ("export", record.export_url or "none yet"),
        ("optimizer steps recorded", len(record.metrics)),
        ("planned steps", (record.plan or {}).get("total_steps", "?")),
        ("starts of `rmrun run`", record.num_starts or "?"),
        ("resumes", len(record.resumes)),
        ("committed checkpoints (kept)", ", ".join(map(str, record.checkpoints)) or "none"),
    ]
    if (record.plan or {}).get("sources"):
        from rmrun.recipe.plan import Plan

        rows.append(("mixture of sources", Plan.from_dict(record.plan).mixture_text()))
    for key in EVAL_KEYS:
        if key in final:
            rows.append((f"final eval {key}", _fmt(final[key])))
    for table, what in (("sources", "source"), ("subsets", "subset")):
        for name, entry in final.get(table, {}).items():
            for key in ("accuracy", "best_of_n_accuracy"):
                if entry.get(key) is not None:
                    rows.append((f"final eval {key}, {what} {name} ({entry['pairs']} pairs)", _fmt(entry[key])))
    if scored is not None:
        rows += [("ECE", _fmt(scored.calibration["ece"])), ("Brier", _fmt(scored.calibration["brier"]))]
    return rows


def _resume_section(record) -> str:
    if not record.resumes:
        return "<p>The run was never resumed: it trained in one start.</p>"
    rows = [("generation", "took up at step", "from", "world size", "started (UTC)")]
    for r in record.resumes:
        when = (
            datetime.datetime.fromtimestamp(r.time, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
            if r.time
            else "—"
        )
        origin = r.checkpoint or ("inferred from the history" if r.inferred else "no checkpoint: started over")
        rows.append((r.generation, r.step, origin, r.world_size or "—", when))
    items = "".join(f"<li>resumed at step {r.step} (lease generation {r.generation})</li>" for r in record.resumes)
    return f"<ul>{items}</ul>" + _table(rows)


CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:0.5em 0}td{border:1px solid #ccc;padding:2px 8px;font-size:14px}"
    "figure{margin:1.5em 0}img{max-width:100%;border:1px solid #eee}figcaption{font-size:13px;color:#555}"
    "pre{background:#f6f6f6;padding:0.8em;overflow-x:auto;font-size:12px}.note{color:#8a4b00}"
)


def render(record, scored, figures: list, rewards_note: str) -> str:
    """The page's HTML."""
    esc = html.escape
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>rmrun report: {esc(record.name)}</title>"
        f"<style>{CSS}</style></head><body><h1>rmrun report: {esc(record.name)}</h1>",
        f"<p>Generated {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC} from {esc(record.source)}.</p>",
    ]
    parts += [f"<p class='note'>{esc(n)}</p>" for n in record.notes]
    parts += ["<h2>Summary</h2>", _table(_summary(record, scored)), "<h2>Resumes</h2>", _resume_section(record)]
    if record.quarantined:
        parts += [
            "<h2>Quarantined states</h2>",
            _table([(q["key"], q["attempt"], q["reason"]) for q in record.quarantined]),
        ]
    parts.append("<h2>Figures</h2>")
    for name, caption in figures:
        parts.append(
            f"<figure><img src='{esc(name)}' alt='{esc(name[:-4])}'><figcaption>{esc(caption)}</figcaption></figure>"
        )
    if rewards_note:
        parts.append(f"<p class='note'>Reward histograms and calibration curve: {esc(rewards_note)}.</p>")
    parts.append("<h2>Recipe</h2>")
    if record.recipe_text is not None:
        parts.append(f"<p>{esc(record.recipe_path or '')}</p><pre>{esc(record.recipe_text)}</pre>")
    if record.recipe_keys:
        keys = "\n".join(f"{k} = {json.dumps(v)}" for k, v in sorted(record.recipe_keys.items()))
        parts.append(f"<p>Result-changing keys as the run resolved them:</p><pre>{esc(keys)}</pre>")
    parts += [
        "<h2>Plan</h2>",
        f"<pre>{esc(json.dumps(record.plan, indent=2, sort_keys=True))}</pre>"
        if record.plan
        else "<p>No plan recorded yet.</p>",
        "</body></html>",
    ]
    return "\n".join(parts)


def write_report(target: str, *, out: str | None, rewards: str = "auto") -> str:
    """Build the page for ``target`` into ``out`` (a local directory or fsspec URL); returns ``out``."""
    import fsspec

    record, scored, note = build(target, rewards=rewards)
    out = out or f"rmrun-report-{record.name}"
    fs, path = fsspec.core.url_to_fs(out)
    with tempfile.TemporaryDirectory(prefix="rmrun-report-") as tmp:
        figures = _figures(record, scored, tmp)
        with open(os.path.join(tmp, "index.html"), "w") as f:
            f.write(render(record, scored, figures, note))
        fs.makedirs(path, exist_ok=True)
        for name in ["index.html", *(n for n, _ in figures)]:
            fs.put_file(os.path.join(tmp, name), f"{path.rstrip('/')}/{name}")
    return out


def report(target: str, *, out: str | None, rewards: str) -> int:
    """The command; user errors raise ReportError (the CLI prints one line, exit 2), a store's
    StoreError exits 3 (``rmrun.errors``)."""
    from rmrun.errors import EXIT_OK
    from rmrun.run.preflight import bucket_error, protocol_problem

    problem = protocol_problem(target) if "://" in target else None
    if problem:
        raise ReportError(f"{target}: {problem}")
    try:
        written = write_report(target, out=out, rewards=rewards)
    except FileNotFoundError as e:
        raise ReportError(f"{target}: {bucket_error(e, target)}") from None
    print(f"wrote {written.rstrip('/')}/index.html")
    return EXIT_OK
