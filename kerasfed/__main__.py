"""``python -m kerasfed ...``: the same as the ``kerasfed`` command."""

from kerasfed.cli import main

raise SystemExit(main())
