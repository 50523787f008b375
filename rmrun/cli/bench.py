"""``rmrun bench RECIPE``: short throw-away runs of a recipe, swept keys side by side."""

from __future__ import annotations

from rmrun.cli.args import add_set


def add(sub) -> None:
    text = (
        "time short throw-away runs of a recipe for every combination of swept keys, side by side, on this "
        "machine; rank them and write bench.json, bench.md and bench.png"
    )
    p = sub.add_parser("bench", help=text, description=text)
    p.add_argument("recipe")
    p.add_argument(
        "--sweep",
        dest="sweeps",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="a recipe key and the values to try, e.g. --sweep plugin.name=ddp,zero2 (repeatable; "
        "every combination runs)",
    )
    add_set(p, help="override a recipe key for every combination (repeatable)")
    p.add_argument("--steps", type=int, default=6, help="timed optimizer steps per combination per round (default 6)")
    p.add_argument(
        "--rounds", type=int, default=2, help="rounds; each runs every combination once, order rotating (default 2)"
    )
    p.add_argument("--pairs", type=int, default=512, help="training pairs in the seeded sample (default 512)")
    p.add_argument("--out", default=None, help="directory for the files (default ./rmrun-bench-<run.name>)")
    p.set_defaults(func=command)


def command(args) -> int:
    from rmrun.bench.bench import bench
    from rmrun.errors import EXIT_OK

    bench(
        args.recipe,
        sweeps=args.sweeps,
        sets=args.overrides,
        steps=args.steps,
        rounds=args.rounds,
        num_pairs=args.pairs,
        out=args.out,
    )
    return EXIT_OK
