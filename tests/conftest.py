"""Fixtures every test layer may use, registered once here (a test module names them as
arguments and imports nothing to get them):

- ``s3_root`` (tests/s3server.py): a local S3 (moto server) on loopback, session-scoped;
- ``counting_s3`` (tests/s3counting.py): one that counts the bytes it serves, module-scoped;
- ``tiny_bert``: a 2-layer BERT model folder, module-scoped.

The unit layer's own fixtures are in tests/unit/conftest.py;
helpers that are plain functions are in tests/helpers.py.
"""

import pytest

pytest_plugins = ["tests.s3server", "tests.s3counting"]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    """A 2-layer BERT config and a WordPiece tokenizer over the quickstart's words (a model folder)."""
    from tests.helpers import build_tiny_bert

    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))
