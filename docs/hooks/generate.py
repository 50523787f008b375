"""MkDocs hook: the manual's reference pages, generated from the code at every build.

Each page comes from a function of the package (``rmrun.recipe.explain``, ``rmrun.errors``,
``rmrun.runtime.faults``; none of them imports torch), so the tests check the same Markdown
without MkDocs, and a key, an exit code or a fault point cannot be documented by hand.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # document the checkout being built, whichever rmrun is installed


def recipe_page() -> str:
    from rmrun.recipe.explain import reference_markdown

    return "# Recipe keys\n\n" + reference_markdown()


def exit_codes_page() -> str:
    from rmrun.errors import exit_codes_markdown

    return (
        "# Exit codes\n\n"
        "Every command exits with one of these codes, defined once in `rmrun/errors.py` "
        "(`EXIT_CODES`), so that a scheduler can act on it. What stops a run and how it resumes: "
        "[Commands and exit codes](../commands.md#exit-codes), [Exact resume](../resume.md).\n\n"
        + exit_codes_markdown()
    )


def fault_points_page() -> str:
    from rmrun.runtime.faults import fault_points_markdown

    return (
        "# Fault points\n\n"
        "The points where `RMRUN_FAULTS` kills, fails, signals or slows a run "
        "([how to write a directive](../resume.md#fault-points)), in the order a run reaches them "
        "(`rmrun/runtime/faults.py`, `FAULT_POINTS`). `rmrun verify-resume --points all` kills a run "
        "at each in turn.\n\n" + fault_points_markdown()
    )


# Generated page -> the function that writes it (mkdocs.yml's nav names these paths).
PAGES = {
    "reference/recipe.md": recipe_page,
    "reference/exit-codes.md": exit_codes_page,
    "reference/fault-points.md": fault_points_page,
}


def on_files(files, config):
    from mkdocs.structure.files import File

    for path, page in PAGES.items():
        files.append(File.generated(config, path, content=page()))
    return files
