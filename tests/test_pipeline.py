import pytest

from movierec import pipeline
from movierec.core.settings import DataSettings, Settings


def test_load_data_sources(ml100k_dir):
    def load(**source):
        return pipeline.load_data(Settings(data=DataSettings(**source)))

    assert load(dir=str(ml100k_dir), max_ratings=500).ratings.num_rows == 500
    assert load(synthetic_ratings=3000).ratings.num_rows == 3000
    with pytest.raises(ValueError, match="choose one of --data-dir, --data-source and --synthetic-ratings"):
        load(dir=str(ml100k_dir), synthetic_ratings=10)


def test_protocol_splits(small_encoded):
    enc = small_encoded
    tfrs, msr = pipeline.split_for(enc, "tfrs", 42), pipeline.split_for(enc, "msr", 42)
    assert tfrs.method == "random" and len(tfrs.test) + tfrs.dropped_test == round(0.2 * len(enc.rating))
    assert msr.method == "stratified"
    assert set(enc.user_idx[msr.test]) <= set(enc.user_idx[msr.train])
    with pytest.raises(ValueError, match="unknown protocol"):
        pipeline.split_for(enc, "netflix", 42)
