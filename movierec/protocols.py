"""Evaluation protocols: published ways of splitting MovieLens, so figures stand beside published ones.

Kept apart from the scoring code (``evaluation``) so that choosing and describing a protocol
(parameter checks, cards) does not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Protocol:
    name: str
    split_method: str  # one of movierec.split.METHODS
    test_fraction: float
    description: str
    published: tuple[tuple[str, str], ...] = ()  # (model, figures) as published, for reports


PROTOCOLS = {
    "tfrs": Protocol(
        "tfrs", "random", 0.2,
        "TensorFlow Recommenders tutorials: 80/20 random split of all ratings (seed 42); top-K accuracy over "
        "all movies with seen movies not excluded",
        (("TFRS retrieval tutorial (basic)", "top100 0.233"), ("TFRS deep retrieval with features", "top100 ~0.29"),
         ("TFRS ranking tutorial", "RMSE ~1.10"))),
    "msr": Protocol(
        "msr", "stratified", 0.25,
        "Microsoft Recommenders benchmark: per-user stratified 75/25 random split (seed 42); top-10 of unseen "
        "movies, every held-out movie relevant",
        (("BiVAE", "nDCG@10 0.475, P@10 0.412, R@10 0.219"), ("BPR", "nDCG@10 0.442"), ("LightGCN", "nDCG@10 0.420"),
         ("SAR", "nDCG@10 0.383"))),
    "temporal": Protocol(
        "temporal", "temporal", 0.2,
        "Production-like: one global time cutoff, the latest 20% of ratings are test; users and movies first seen "
        "after the cutoff cannot be scored and are dropped (counted in the split card)"),
}


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; expected one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]
