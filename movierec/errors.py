"""The errors a caller of the installed package can act on, importable without any model code."""

from __future__ import annotations


class DataError(ValueError):
    """Bad input data; the message names the file, the line where known, and what was expected.
    Here, not in ``movierec.data``, so that code which only reports it (the flow's steps, their
    cards) need not import the readers and pyarrow."""


class RecommenderError(Exception):
    """Base class for errors a caller can act on (bad ids, bad arguments, an unusable bundle)."""


class UnknownUserError(RecommenderError, KeyError):
    def __str__(self) -> str:
        return f"unknown user id {self.args[0]}: the model was not trained on this user"


class UnknownMovieError(RecommenderError, KeyError):
    def __str__(self) -> str:
        return f"unknown movie id {self.args[0]}: not in the model's catalogue"


class MovieExistsError(RecommenderError):
    """A movie added to a loaded model under an id its catalogue already has."""

    def __str__(self) -> str:
        return f"movie {self.args[0]} is already in the catalogue"


class NoUserDataError(RecommenderError):
    """The bundle was published without per-user data: only history-based requests work."""

    def __init__(self) -> None:
        super().__init__("this model was published without per-user data (publish.user_data=false): it knows no "
                         "users; ask for recommendations from a history of rated movies instead")


class NoRatingModelError(RecommenderError):
    """The model was trained on implicit-only data: it orders movies but predicts no stars."""

    def __init__(self) -> None:
        super().__init__("this model was trained on implicit-only data (no rating column): it recommends movies "
                         "but predicts no star ratings")


class BundleError(RecommenderError):
    """A bundle that is missing or cannot be read; the message names the bundle and the file."""
