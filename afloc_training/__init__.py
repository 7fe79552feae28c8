"""Training AFLoc from image-report pairs: data sources, report parsing, phantoms, trainer, CLI."""
