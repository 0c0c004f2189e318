"""What every layer shares and nothing else: typed settings, ids, arrays, metrics, checksums, progress.

Imports nothing else of movierec, so data, models, serving and training can all stand on it."""
