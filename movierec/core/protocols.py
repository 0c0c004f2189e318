"""Evaluation protocols: published ways of splitting MovieLens, so figures stand beside published ones.

Kept apart from the scoring code (``evaluation``) so that choosing and describing a protocol
(parameter checks, cards) does not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Protocol:
    name: str
    split_method: str  # one of movierec.data.split.METHODS
    test_fraction: float
    description: str
    published: tuple[tuple[str, str], ...] = ()  # (model, figures) as published on other splits, for reports
    # (model, figures) of the libraries users would pick instead, measured on this protocol's own
    # splits by benchmarks/peers.py (mean of seeds 42-44): they replace a published figure of the
    # same model, which was measured on another split
    measured: tuple[tuple[str, str], ...] = ()

    @property
    def cold(self) -> bool:
        """Whether the test split holds out whole movies: only models reading movie features score them."""
        return self.split_method == "coldstart"

    def others(self) -> list[dict[str, str]]:
        """Rows for reports: the measured peers first, then what was published elsewhere."""
        return ([{"model": m, "figures": f, "where": "measured on these splits (benchmarks/peers.py, 3 seeds)"}
                 for m, f in self.measured]
                + [{"model": m, "figures": f, "where": "published, on another split"} for m, f in self.published])


PROTOCOLS = {
    "tfrs": Protocol(
        name="tfrs", split_method="random", test_fraction=0.2,
        description="TensorFlow Recommenders tutorials: 80/20 random split of all ratings (seed 42); top-K accuracy "
        "over all movies with seen movies not excluded",
        published=(("TFRS retrieval tutorial (basic)", "top100 0.233"),
                   ("TFRS deep retrieval with features", "top100 ~0.29"), ("TFRS ranking tutorial", "RMSE ~1.10")),
        measured=(("BiVAE (cornac)", "nDCG@10 0.434, top100 0.417"), ("EASEᴿ (cornac)", "nDCG@10 0.427"),
                  ("ALS (implicit)", "nDCG@10 0.431"), ("SVD++ (Surprise)", "RMSE 0.921"))),
    "msr": Protocol(
        name="msr", split_method="stratified", test_fraction=0.25,
        description="Microsoft Recommenders benchmark: per-user stratified 75/25 random split (seed 42); top-10 of "
        "unseen movies, every held-out movie relevant",
        published=(("LightGCN (Microsoft Recommenders)", "nDCG@10 0.420"), ("SAR", "nDCG@10 0.383")),
        measured=(("BiVAE (cornac)", "nDCG@10 0.484, P@10 0.421, R@10 0.227"), ("ALS (implicit)", "nDCG@10 0.474"),
                  ("EASEᴿ (cornac)", "nDCG@10 0.465"), ("BPR (implicit)", "nDCG@10 0.308"),
                  ("SVD++ (Surprise)", "RMSE 0.923"))),
    "temporal": Protocol(
        name="temporal", split_method="temporal", test_fraction=0.2,
        description="Production-like: one global time cutoff, the latest 20% of ratings are test; users and movies "
        "first seen after the cutoff cannot be scored and are dropped (counted in the split card)",
        measured=(("BiVAE (cornac)", "nDCG@10 0.191, R@10 0.079"), ("EASEᴿ (cornac)", "nDCG@10 0.177, R@10 0.096"),
                  ("SVD++ (Surprise)", "RMSE 0.975"))),
    "coldstart": Protocol(
        name="coldstart", split_method="coldstart", test_fraction=0.1,
        description="Movies nobody has rated yet: 10% of the rated movies are held out with all their ratings "
        "(seed 42); each test user ranks the held-out movies, those they rated relevant. Only a model that reads "
        "a movie's features (the two-tower, a content baseline) can score them: EASEᴿ, ALS, LightGCN and the "
        "peers know a movie by its ratings alone"),
}


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; expected one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]
