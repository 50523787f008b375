"""``rmrun verify-resume RECIPE``: a run uninterrupted and one killed, compared bit for bit."""

from __future__ import annotations

from rmrun.cli.args import add_set
from rmrun.runtime.faults import FAULT_POINTS


def add(sub) -> None:
    p = sub.add_parser("verify-resume", help="run a recipe uninterrupted and with SIGKILLs; compare bit for bit")
    p.add_argument("recipe")
    p.add_argument("--kills", type=int, default=2, help="number of SIGKILLs at random steps (default 2)")
    p.add_argument(
        "--points",
        default=None,
        metavar="all|POINT[:STEP],...",
        help="instead of random steps, one SIGKILL at each fault point, in turn: " + ", ".join(FAULT_POINTS),
    )
    p.add_argument(
        "--state-root",
        default=None,
        metavar="URL",
        help="where the two runs keep their state (any fsspec URL; default: the workdir)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed choosing the kill steps")
    p.add_argument("--workdir", default=None, help="where the two runs keep their state (default: a temp dir)")
    add_set(p)
    p.set_defaults(func=command)


def command(args) -> int:
    from rmrun.run.verify import verify_resume

    return verify_resume(
        args.recipe,
        kills=args.kills,
        seed=args.seed,
        workdir=args.workdir,
        overrides=args.overrides,
        points=args.points,
        state_root=args.state_root,
    )
