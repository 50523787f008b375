"""A model directory that ships Python code, refused in a fresh interpreter with stdin open:
one line, never an interactive "[y/N]" prompt."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import custom_code_model


def test_no_prompt_even_on_a_terminal_like_stdin(tmp_path):
    """With stdin open and nothing typed, an unasked prompt would hang until the timeout."""
    directory, marker = custom_code_model(tmp_path)
    code = (
        "from rmrun.model.model import build_reward_model, ModelError\n"
        "from rmrun.recipe.schema import ModelSection\n"
        f"try:\n    build_reward_model(ModelSection(pretrain={directory!r}), tokenizer=None, seed=0)\n"
        "except ModelError as e:\n    print('refused')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, capture_output=True, text=True, timeout=120
    )
    assert done.stdout.strip() == "refused", done.stderr[-2000:]
    assert not marker.exists()
