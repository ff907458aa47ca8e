"""``python -m gapinit_ray.cli``: the `gapinit` command (how Ray jobs and the tests run it)."""

from __future__ import annotations

import sys

from gapinit_ray.cli.main import main

sys.exit(main())
