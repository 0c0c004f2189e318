"""movierec: a two-stage movie recommender (two-tower retrieval + rating model) built on Metaflow and Ray."""

__version__ = "0.1.0"
