"""A model directory that ships Python code is refused unless the recipe trusts it:
one line naming the recipe key, never an interactive "[y/N]" prompt."""

from __future__ import annotations

import json

import pytest

from rmrun.recipe.schema import ModelSection


def custom_code_model(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "model_type": "rmrun_custom",
                "hidden_size": 8,
                "auto_map": {"AutoConfig": "configuration_custom.CustomConfig"},
            }
        )
    )
    marker = tmp_path / "ran"
    (tmp_path / "configuration_custom.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    return str(tmp_path), marker


def test_trust_remote_code_is_off_by_default():
    assert ModelSection().trust_remote_code is False


def test_custom_code_is_refused_in_one_line_without_running_it(tmp_path):
    from rmrun.model.model import ModelError, build_reward_model

    directory, marker = custom_code_model(tmp_path)
    with pytest.raises(ModelError, match=r"set \[model\].trust_remote_code = true to run it"):
        build_reward_model(ModelSection(pretrain=directory), tokenizer=None, seed=0)
    assert not marker.exists()
