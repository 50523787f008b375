"""``rmrun report TARGET``: an HTML page about a run from its state alone."""

from __future__ import annotations


def add(sub) -> None:
    text = (
        "write an HTML page about a run from its state alone (local or any fsspec URL): training, eval and "
        "throughput curves with epoch ends and resumes marked, reward histograms, accuracy by length against "
        "the longer-wins baseline, calibration, recipe and plan"
    )
    p = sub.add_parser("report", help=text, description=text)
    p.add_argument("target", help="a run's state root (run.state; or the recipe that names it), or an export directory")
    p.add_argument(
        "--out",
        default=None,
        help="directory (or fsspec URL) for index.html and its PNG figures (default ./rmrun-report-<run.name>)",
    )
    p.add_argument(
        "--rewards",
        choices=("auto", "yes", "no"),
        default="auto",
        help="score the eval pairs with the final model for the reward histograms and calibration: "
        "auto (default) does when the weights are under 2 GiB or a GPU is present",
    )
    p.set_defaults(func=command)


def command(args) -> int:
    from rmrun.report.report import report

    return report(args.target, out=args.out, rewards=args.rewards)
