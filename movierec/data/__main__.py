"""``python -m movierec.data``: fetch ML-100K, or check a data folder (:func:`movierec.data.core.main`)."""

import sys

from movierec.data.core import main

sys.exit(main())
