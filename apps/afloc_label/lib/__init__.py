"""AFLoc Label app internals: datastore, checkpoints, label files and the MONAI Label tasks."""
