"""What the cards show, as ``movierec.reports.cards`` builds them from a step's results."""

import json

from movierec.reports import cards


def test_a_search_of_many_trials_keeps_its_card_small():
    """A card charts the best trials' curves and lists the best rows only: a search's card grew
    with every trial and epoch (500 trials of 20 epochs: 10,000 points in one card)."""
    from movierec.training.rating_search import RankingResult

    trials = [{"trial": t, "lr": 0.001 * t, "epochs": 20, "best_val_rmse": 1.0 - t / 1000} for t in range(500)]
    curves = [{"trial": t, "epoch": e, "val_rmse": 1.2 - t / 1000 - e / 100, "examples_per_s": 5000.0}
              for t in range(500) for e in range(1, 21)]
    card = cards.ranking_card(RankingResult(b"", {"lr": 0.499}, {}, 0.501, trials, curves))
    rendered = json.dumps([component.render() for component in card])
    assert len(rendered) < 32 * 1024
    chart = next(c.render() for c in card if c.render().get("type") == "vegaChart")
    charted = {row["trial"] for row in chart["spec"]["data"]["values"]}
    assert charted == set(range(490, 500))  # the ten best (lowest RMSE)
    assert "499" in rendered and "the 10 best of 500" in rendered


def test_a_table_of_rows_with_different_keys_shows_every_key():
    """The sources card has one row per source with that source's own hyperparameters: the columns were
    the first row's keys only, so EASE's `lambda` or ALS's `factors` showed as "—" after a popularity row."""
    from movierec.reports.components import table

    rendered = table([{"source": "popularity", "val": 0.1},
                      {"source": "ease", "lambda": 250.0, "val": 0.2},
                      {"source": "als", "factors": 64, "alpha": 2.5}]).render()
    assert rendered["columns"] == ["source", "val", "lambda", "factors", "alpha"]
    assert rendered["data"] == [["popularity", "0.1", "—", "—", "—"],
                                ["ease", "0.2", "250", "—", "—"],
                                ["als", "—", "—", "64", "2.5"]]


def test_the_sources_card_shows_each_sources_own_hyperparameters():
    """Popularity (no hyperparameters) came first, so EASE's `lambda` and ALS's factors/alpha were dropped."""
    from movierec.core.settings import RetrievalConfig
    from movierec.models.sources import SourceModels
    from movierec.training.retrieval import RetrievalResult

    chosen = {"popularity": {"params": {}, "val_ndcg": 0.05}, "ease": {"params": {"lambda": 250.0}, "val_ndcg": 0.12},
              "als": {"params": {"factors": 64, "regularization": 0.01, "alpha": 2.5}, "val_ndcg": 0.1}}
    history = [{"epoch": 1, "loss": 5.0, "val_dcg": 0.1}]
    card = cards.retrieval_card(RetrievalResult(b"", RetrievalConfig(), {}, history),
                                SourceModels(tuning={}, final={}, chosen=chosen))
    sources = next(c.render() for c in card if c.render().get("type") == "table")
    assert sources["columns"] == ["source", "validation nDCG@10", "lambda", "factors", "regularization", "alpha"]
    assert sources["data"][1] == ["ease", "0.12", "250", "—", "—", "—"]
    assert sources["data"][2] == ["als", "0.1", "—", "64", "0.01", "2.5"]


def test_the_retrieval_card_says_how_the_model_learned_and_the_sizes_it_took():
    """Settings left to the model (dim and epochs 0) show the values it trained with; the heading
    names the ratings tower's objective, not the pair-trained one's."""
    from movierec.core.settings import RetrievalConfig
    from movierec.models.sources import SourceModels
    from movierec.training.retrieval import RetrievalResult

    sources = SourceModels(tuning={}, final={}, chosen={})
    history = [{"epoch": 1, "loss": 5.0, "val_dcg": 0.1}]
    for cfg, objective, dim in [(RetrievalConfig(), "in-batch softmax", "64"),
                                (RetrievalConfig(user_tower="ratings"), "softmax over the whole catalogue", "200")]:
        rendered = [c.render() for c in cards.retrieval_card(RetrievalResult(b"", cfg, {}, history), sources)]
        assert objective in next(r["source"] for r in rendered if "retrieval (" in r.get("source", ""))
        settings = dict(next(r for r in rendered if r.get("columns") == ["name", "value"])["data"])
        assert (settings["dim"], settings["epochs"]) == (dim, "15" if dim == "64" else "200")
    # a run records the cap and patience it resolved (the ratings tower's follow the data's size)
    ran = RetrievalResult(b"", RetrievalConfig(user_tower="ratings"), {}, history, epochs=10, patience=1)
    rendered = [c.render() for c in cards.retrieval_card(ran, sources)]
    settings = dict(next(r for r in rendered if r.get("columns") == ["name", "value"])["data"])
    assert (settings["epochs"], settings["patience"]) == ("10", "1")
