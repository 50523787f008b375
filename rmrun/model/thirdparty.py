"""Importing bitsandbytes without the import-time work rmrun never uses.

bitsandbytes is imported by ``colossalai.booster`` (through ``colossalai.quantization``,
unconditionally) and by peft when it adds LoRA layers. rmrun quantizes nothing, yet the
import costs seconds and prints a line:

- it wraps its CPU fallback kernels in ``torch.compile`` at import, and creating a
  compiled function imports torch's inductor (2-4 s on 2 cores, plus its compile workers);
- it logs a warning when the optional ``kernels`` package is absent, about a 4-bit CPU
  kernel rmrun never calls.

``torch.compile`` reads ``TORCHDYNAMO_DISABLE`` when it is called (in
``torch._dynamo.optimize``, nowhere else): a function wrapped while it is ``1`` is the
plain eager function, correct and uncompiled. :func:`compile_off` sets it for the length
of an import and puts back what was there, so compiles later in the process, rmrun's or
the user's, are untouched. The same holds for ColossalAI's own import-time compiles
(:mod:`rmrun.model.boost` decides which of those a recipe needs).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from contextlib import contextmanager

DYNAMO_OFF = "TORCHDYNAMO_DISABLE"
KERNELS_NOTICE = "Failed to load CPU gemm_4bit_forward from kernels-community"
_NOTICE_LOGGER = "bitsandbytes.backends.cpu.ops"


@contextmanager
def compile_off():
    """``torch.compile`` returns its function unchanged inside the block."""
    before = os.environ.get(DYNAMO_OFF)
    os.environ[DYNAMO_OFF] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(DYNAMO_OFF, None)
        else:
            os.environ[DYNAMO_OFF] = before


class _DropKernelsNotice(logging.Filter):
    """Drops that one notice; every other record of the logger passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(KERNELS_NOTICE)


def import_bitsandbytes() -> None:
    """Import bitsandbytes, where installed, with its kernels uncompiled and without the
    ``kernels`` notice; later imports of it (ColossalAI's, peft's) find it loaded.

    An ImportError is left for those importers, which decide themselves whether
    bitsandbytes is optional."""
    if "bitsandbytes" in sys.modules or importlib.util.find_spec("bitsandbytes") is None:
        return
    logger = logging.getLogger(_NOTICE_LOGGER)
    notice = _DropKernelsNotice()
    logger.addFilter(notice)
    try:
        with compile_off():
            import bitsandbytes  # noqa: F401
    except ImportError:
        pass
    finally:
        logger.removeFilter(notice)
