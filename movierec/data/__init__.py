"""Loading movie ratings into one normalised shape: the public face of the package.

Every source ends up as a :class:`Dataset` of three Arrow tables with fixed schemas. The modules:

- ``core``: :class:`Dataset`, the schemas, :class:`DataError`, the checks every reader shares,
  tidying (duplicates), and joining the ratings users sent (:func:`with_feedback`);
- ``delimited``: reading a delimited text file, failing with its file, line and problem;
- ``movielens``: the MovieLens layouts (ML-100K in recbole's and GroupLens' files, ml-1m/ml-10m,
  the CSV layout of ml-latest, ml-20m, ml-25m); ``moviesdataset``: The Movies Dataset (Kaggle);
- ``layouts``: which layout a folder (or a zip of one, or an S3 prefix) holds, loading it through
  the Parquet cache (:func:`load_dataset`);
- ``interactions``: a user's own interactions file; ``postgres``: PostgreSQL queries;
- ``fetch``: downloading ML-100K from PyPI; ``__main__``: ``python -m movierec.data``.

Imports go one way, readers -> ``core``, ``layouts`` -> readers, this face -> all; ``core``
imports none of the others, so there is no cycle. Names other modules use are re-exported here
(``from movierec import data; data.load_dataset(...)``); a test that patches a module-level name
patches it in the module that reads it (e.g. ``movierec.data.layouts.CACHE_FORMAT``).
"""

from movierec.data.core import (
    ITEMS_SCHEMA,
    RATINGS_SCHEMA,
    USERS_SCHEMA,
    DataError,
    Dataset,
    DataWarning,
    split_title_year,
    with_feedback,
)
from movierec.data.fetch import ML100K_MEMBER_DIR, RECBOLE_WHEEL_SHA256, extract_ml100k, fetch_ml100k
from movierec.data.interactions import INTERACTION_SUFFIXES, load_interactions
from movierec.data.layouts import LAYOUTS, detect_layout, load_dataset, load_remote_dataset
from movierec.data.movielens import ML100K_GENRES, load_grouplens_csv, load_ml1m, load_recbole_ml100k
from movierec.data.postgres import load_postgres

__all__ = [
    "INTERACTION_SUFFIXES",
    "ITEMS_SCHEMA",
    "LAYOUTS",
    "ML100K_GENRES",
    "ML100K_MEMBER_DIR",
    "RATINGS_SCHEMA",
    "RECBOLE_WHEEL_SHA256",
    "USERS_SCHEMA",
    "DataError",
    "DataWarning",
    "Dataset",
    "detect_layout",
    "extract_ml100k",
    "fetch_ml100k",
    "load_dataset",
    "load_grouplens_csv",
    "load_interactions",
    "load_ml1m",
    "load_postgres",
    "load_recbole_ml100k",
    "load_remote_dataset",
    "split_title_year",
    "with_feedback",
]
