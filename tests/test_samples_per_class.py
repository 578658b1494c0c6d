"""`data.samples_per_class`: N training rows per class, drawn reproducibly, shortfalls logged and recorded, the
validation split of data without one, and bad values refused naming the key."""

import logging

import pytest
from conftest import recipe_yaml, sentiment_rows, write_csv

from hf_transfer.data import sample_per_class
from hf_transfer.errors import RecipeError
from hf_transfer.recipe import load_recipe
from hf_transfer.tasks import prepare_data

LABELS = [0] * 30 + [1] * 12 + [2] * 3


def test_the_same_seed_draws_the_same_rows_and_another_seed_others():
    first, short = sample_per_class(LABELS, 5, seed=7, num_labels=3)
    again, _ = sample_per_class(LABELS, 5, seed=7, num_labels=3)
    other, _ = sample_per_class(LABELS, 5, seed=8, num_labels=3)
    assert first == again == sorted(first)
    assert other != first
    counts = [sum(LABELS[i] == c for i in first) for c in range(3)]
    assert counts == [5, 5, 3]  # class 2 has only 3 rows: all of them are kept
    assert short == {2: 3}
    assert {i for i in first if LABELS[i] == 2} == {42, 43, 44}


def test_multi_hot_rows_are_taken_until_every_class_has_n():
    rows = [[1, 0, 0]] * 20 + [[0, 1, 0]] * 20 + [[1, 0, 1]] * 2
    taken, short = sample_per_class(rows, 4, seed=0, num_labels=3)
    counts = [sum(rows[i][c] for i in taken) for c in range(3)]
    assert counts[1] == 4 and counts[0] >= 4
    assert counts[2] == 2 and short == {2: 2}
    assert taken == sample_per_class(rows, 4, seed=0, num_labels=3)[0]


def _recipe(tmp_path, folder, **data):
    return load_recipe(recipe_yaml(tmp_path / "r.yaml", "unused", folder, tmp_path / "out", data=data))


def test_a_split_of_the_data_keeps_its_validation_and_train_keeps_n_per_class(tmp_path, sentiment_folder):
    data = prepare_data(_recipe(tmp_path, sentiment_folder, samples_per_class=4))
    train = data.splits["train"]
    assert sorted(train["label"]) == [0, 0, 0, 0, 1, 1, 1, 1]
    assert len(data.splits["validation"]) == 24  # the data's own validation split, untouched
    assert data.labels.selects_best is True
    sampled = data.labels.sampled
    assert {k: sampled[k] for k in ("per_class", "seed", "rows", "from_rows", "short")} == {
        "per_class": 4,
        "seed": 0,
        "rows": 8,
        "from_rows": 96,
        "short": {},
    }
    again = prepare_data(_recipe(tmp_path, sentiment_folder, samples_per_class=4))
    assert again.splits["train"]["text"] == train["text"]
    assert again.labels.sampled["rows_sha256"] == sampled["rows_sha256"]


def test_without_validation_the_undrawn_rows_validate_and_the_last_epoch_is_kept(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    write_csv(folder / "train.csv", sentiment_rows(200, 4))
    data = prepare_data(_recipe(tmp_path, folder, samples_per_class=8))
    train, validation = data.splits["train"], data.splits["validation"]
    assert len(train) == 16  # every drawn row trains
    assert len(validation) == 20  # validation_fraction (0.1) of the 200 rows, from the 184 left undrawn
    assert not set(train["text"]) & set(validation["text"])
    assert data.labels.selects_best is False
    again = prepare_data(_recipe(tmp_path, folder, samples_per_class=8))
    assert again.splits["validation"]["text"] == validation["text"]


def test_select_best_can_be_asked_for_explicitly(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    write_csv(folder / "train.csv", sentiment_rows(200, 4))
    data, training = {"samples_per_class": 8}, {"select_best": True}
    path = recipe_yaml(tmp_path / "r.yaml", "unused", folder, tmp_path / "out", data=data, training=training)
    assert prepare_data(load_recipe(path)).labels.selects_best is True


def test_tiny_data_keeps_every_row_of_a_short_class_and_says_so(tmp_path, caplog):
    folder = tmp_path / "data"
    folder.mkdir()
    rows = [(t, "pos") for t, _ in sentiment_rows(12, 5)[::2]] + [(t, "neg") for t, _ in sentiment_rows(6, 6)[1::2]]
    write_csv(folder / "train.csv", rows)  # 6 pos, 3 neg
    with caplog.at_level(logging.WARNING):
        data = prepare_data(_recipe(tmp_path, folder, samples_per_class=5))
    assert "class 'neg' has 3 training rows; all of them are kept" in caplog.text
    assert data.labels.sampled["short"] == {"neg": 3}
    # Nothing is left undrawn but one 'pos' row: it is the validation split, and no epoch is chosen by it.
    assert len(data.splits["validation"]) == 1 and len(data.splits["train"]) == 8
    assert data.labels.selects_best is False


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (0, "greater than 0"),
        (-3, "greater than 0"),
        ("many", "valid integer"),
        (2.5, "valid integer"),
        (True, "true/false is not a number"),
    ],
)
def test_bad_values_are_one_clear_error_naming_the_key(tmp_path, sentiment_folder, value, problem):
    with pytest.raises(RecipeError) as error:
        _recipe(tmp_path, sentiment_folder, samples_per_class=value)
    message = str(error.value)
    assert "data.samples_per_class" in message and problem in message
    assert len(message.splitlines()) == 1


@pytest.mark.parametrize("task", ["text-regression", "token-classification"])
def test_tasks_without_a_class_per_row_have_nothing_to_draw_from(tmp_path, sentiment_folder, task):
    path = recipe_yaml(
        tmp_path / "r.yaml", "unused", sentiment_folder, tmp_path / "out", data={"samples_per_class": 4}
    )
    with pytest.raises(RecipeError, match=f"task '{task}' has no class per row"):
        load_recipe(path, [f"task={task}"])
