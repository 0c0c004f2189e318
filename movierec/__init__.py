"""movierec: a two-stage movie recommender (two-tower retrieval + rating model) built on Metaflow and Ray.

``from movierec import Recommender`` is all an installed wheel needs; it is imported lazily so
that ``import movierec`` stays cheap for the training code and the command line.
"""

__version__ = "0.1.0"
__all__ = ["Recommender", "__version__"]


def __getattr__(name: str):
    if name == "Recommender":
        from movierec.serving.recommender import Recommender

        return Recommender
    raise AttributeError(f"module 'movierec' has no attribute {name!r}")
