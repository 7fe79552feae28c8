"""``python -m afloc_training.phantoms``: the ``afloc-phantoms`` command."""

from afloc_training.phantoms.cli import main

raise SystemExit(main())
