"""``python -m pipelines.demo``: see :mod:`pipelines.demo.run`."""

from __future__ import annotations

import sys

from pipelines.demo.run import main

if __name__ == "__main__":
    sys.exit(main())
