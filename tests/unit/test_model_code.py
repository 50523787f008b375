"""A model directory that ships Python code is refused unless the recipe trusts it:
one line naming the recipe key, never an interactive "[y/N]" prompt."""

from __future__ import annotations

import pytest

from rmrun.recipe.schema import ModelSection
from tests.helpers import custom_code_model


def test_trust_remote_code_is_off_by_default():
    assert ModelSection().trust_remote_code is False


def test_custom_code_is_refused_in_one_line_without_running_it(tmp_path):
    from rmrun.model.model import ModelError, build_reward_model

    directory, marker = custom_code_model(tmp_path)
    with pytest.raises(ModelError, match=r"set \[model\].trust_remote_code = true to run it"):
        build_reward_model(ModelSection(pretrain=directory), tokenizer=None, seed=0)
    assert not marker.exists()
