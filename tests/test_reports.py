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
