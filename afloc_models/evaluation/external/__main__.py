"""``python -m afloc_models.evaluation.external``: write the external test sets."""

from afloc_models.evaluation.external.writer import main

raise SystemExit(main())
