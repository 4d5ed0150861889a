"""Lets Ray start in the test environment, put on ``PYTHONPATH`` for every process of a test's Ray cluster.

The dev extras install PyPI's ``amdsmi``, whose import raises ``KeyError`` (not ``ImportError``) when ROCm's
``libamd_smi.so`` is missing. Ray's AMD GPU detection (``ray._private.thirdparty.pyamdsmi``, Ray 2.60) runs
at ``import ray`` in every Ray process and only tolerates ``ImportError``, so on a machine without ROCm
``import ray`` fails. Marking the module absent turns that into the ``ImportError`` Ray expects.
"""

import contextlib
import io
import sys

try:
    with contextlib.redirect_stdout(io.StringIO()):  # amdsmi prints its failure to stdout
        import amdsmi  # noqa: F401
except ImportError:
    pass  # not installed, or already marked absent (this guard ran at interpreter start)
except (KeyError, OSError):
    sys.modules["amdsmi"] = None  # type: ignore[assignment]
