"""The Movies Dataset (``movierec.data.moviesdataset``): joined through the links, its dirty rows
dropped and counted.

Every fixture file is written into pytest's ``tmp_path``; expected values are written out by hand.
"""

from pathlib import Path

import pytest
from data_samples import _write

from movierec import data

METADATA_HEADER = ("adult,belongs_to_collection,budget,genres,homepage,id,imdb_id,original_language,original_title,"
                   "overview,popularity,poster_path,production_companies,production_countries,release_date,revenue,"
                   "runtime,spoken_languages,status,tagline,title,video,vote_average,vote_count\n")


def _metadata_row(tmdb: str, title: str, date: str, genres: str, overview: str = "A film.") -> str:
    return (f'False,,0,"{genres}",,{tmdb},tt0114709,en,{title},"{overview}",21.9,/x.jpg,[],[],{date},0,81.0,[],'
            f"Released,,{title},False,7.7,5415\n")


@pytest.fixture
def movies_dataset_dir(tmp_path: Path) -> Path:
    """Kaggle's The Movies Dataset in its real formats, with the dirty rows the real file has."""
    metadata = (METADATA_HEADER
                + _metadata_row("862", "Toy Story", "1995-10-30",
                                "[{'id': 16, 'name': 'Animation'}, {'id': 35, 'name': 'Comedy'}]")
                + _metadata_row("8844", "Jumanji", "1995-12-15", "[{'id': 12, 'name': 'Adventure'}]",
                                overview="Two lines\nin one overview, quoted")
                # a row whose columns are shifted, as three rows of the real file: a date where the id is
                + " - Written by Ørnås,0.065736,/ff9qCepilowshEtG2GYWwzt2bs4.jpg,\"[{'name': 'Carousel Productions',"
                  " 'id': 11176}]\",\"[{'iso_3166_1': 'CA'}]\",1997-08-20,0,104.0,\"[{'iso_639_1': 'en'}]\",Released,"
                  ",1,,,,,,,,,,,,\n"
                + _metadata_row("862", "Toy Story again", "1995-10-30", "[]")  # a repeated id
                + _metadata_row("949", "Heat", "1995-12-15", "not a list")  # genres that do not parse
                + "False,,0,broken line\n")
    links = "movieId,imdbId,tmdbId\n1,0114709,862\n2,0113497,8844\n6,0113277,949\n7,0114319,\n9,0112346,99999\n"
    ratings = ("userId,movieId,rating,timestamp\n1,1,4.0,1260759144\n1,2,3.5,1260759179\n2,6,5.0,1260759182\n"
               "2,7,2.0,1260759185\n3,9,1.0,1260759187\n")
    return _write(tmp_path / "the-movies-dataset", {"movies_metadata.csv": metadata, "links_small.csv": links,
                                                    "ratings_small.csv": ratings, "ratings.csv": "not read\n",
                                                    "links.csv": "not read\n"})


def test_the_movies_dataset_joins_through_links_and_counts_every_dropped_row(movies_dataset_dir: Path):
    assert data.detect_layout(movies_dataset_dir) == "movies-dataset-small"
    ds = data.load_dataset(movies_dataset_dir, cache=False)
    assert ds.ratings.num_rows == 5 and ds.ratings["item_id"].to_pylist() == [1, 2, 6, 7, 9]
    assert ds.items.to_pylist() == [
        {"item_id": 1, "title": "Toy Story", "year": 1995, "genres": ["Animation", "Comedy"]},
        {"item_id": 2, "title": "Jumanji", "year": 1995, "genres": ["Adventure"]},
        {"item_id": 6, "title": "Heat", "year": 1995, "genres": []},
    ]
    notes = "\n".join(ds.warnings)
    for words in ("movies_metadata.csv: 1 lines with too few or too many fields skipped",
                  "movies_metadata.csv: 1 rows without a numeric id dropped",
                  "movies_metadata.csv: 1 rows repeating an earlier id dropped",
                  "movies_metadata.csv: 1 rows with unreadable genres kept without genres",
                  "links_small.csv: 1 movies without a TMDB id",
                  "links_small.csv: 1 movies whose TMDB id is not in movies_metadata.csv",
                  "2 of 5 rated movies have no row in the movies file"):
        assert words in notes, (words, notes)


def test_the_movies_dataset_full_ratings_where_the_small_files_are_absent(movies_dataset_dir: Path):
    (movies_dataset_dir / "ratings.csv").write_text("userId,movieId,rating,timestamp\n4,1,3.0,1260759144\n")
    (movies_dataset_dir / "links.csv").write_text("movieId,imdbId,tmdbId\n1,0114709,862.0\n")
    for small in ("ratings_small.csv", "links_small.csv"):
        (movies_dataset_dir / small).unlink()
    ds = data.load_dataset(movies_dataset_dir, cache=False)
    assert ds.ratings["user_id"].to_pylist() == [4]
    assert ds.items["title"].to_pylist() == ["Toy Story"]  # tmdbId "862.0", as pandas exports write it


def test_a_metadata_file_without_the_expected_columns_is_named(movies_dataset_dir: Path):
    (movies_dataset_dir / "movies_metadata.csv").write_text("movie,name\n1,Toy Story\n")
    with pytest.raises(data.DataError, match="movies_metadata.csv: not The Movies Dataset's metadata file"):
        data.load_dataset(movies_dataset_dir, cache=False)
