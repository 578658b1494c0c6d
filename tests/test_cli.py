"""The command line: each subcommand end to end in-process, `--json` shapes, one-line errors with exit code 2."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT, python_env

from hf_transfer.cli import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert, sentiment_folder):
    from conftest import recipe_yaml

    tmp = tmp_path_factory.mktemp("cli")
    path = recipe_yaml(tmp / "r.yaml", tiny_bert, sentiment_folder, tmp / "unused", training={"epochs": 2})
    assert main(["train", str(path), "training.epochs=3", "--output-dir", str(tmp / "out")]) == 0
    return tmp / "out"


def test_train_honours_overrides_and_output_dir(trained):
    recipe = (trained / "recipe.yaml").read_text()
    assert "epochs: 3" in recipe and str(trained) in recipe


def test_predict_json_has_one_entry_per_input(trained, capsys):
    capsys.readouterr()
    assert main(["predict", str(trained), "a superb superb film", "a tedious tedious plot", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert len(results) == 2
    assert [r["label"] for r in results] == ["pos", "neg"]
    assert set(results[0]["scores"]) == {"pos", "neg"}


def test_texts_after_an_option_are_inputs_too_and_unknown_options_still_fail(trained, capsys):
    capsys.readouterr()
    superb, tedious = "a superb superb film", "a tedious tedious plot"
    command = ["predict", str(trained), superb, "--json", tedious, superb]
    assert main(command) == 0
    assert [r["label"] for r in json.loads(capsys.readouterr().out)] == ["pos", "neg", "pos"]
    with pytest.raises(SystemExit) as error:
        main(["predict", str(trained), "--json", "a superb film", "--jsn"])
    assert error.value.code == 2 and "unrecognized arguments: a superb film --jsn" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", str(trained), "stray"])  # only predict takes inputs
    assert "unrecognized arguments: stray" in capsys.readouterr().err


def test_predict_file_and_plain_output(trained, tmp_path, capsys):
    texts = tmp_path / "in.csv"
    texts.write_text("text\na brilliant brilliant cast\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["predict", str(trained), "--file", str(texts)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("pos\t") and "a brilliant brilliant cast" in line


def test_evaluate_split_and_file(trained, tmp_path, capsys):
    capsys.readouterr()
    assert main(["evaluate", str(trained), "--split", "test"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["accuracy"] == pytest.approx(json.loads((trained / "metrics.json").read_text())["test"]["accuracy"])
    more = tmp_path / "more.csv"
    more.write_text("text,label\nwonderful wonderful,pos\nawful awful,neg\n", encoding="utf-8")
    assert main(["evaluate", str(trained), "--file", str(more)]) == 0
    assert "accuracy" in json.loads(capsys.readouterr().out)


def test_recipes_lists_every_bundled_recipe(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    for path in (ROOT / "recipes").glob("*.yaml"):
        assert path.name in out


def test_schema_writes_json_schema(tmp_path):
    assert main(["schema", "--write", str(tmp_path / "schema.json")]) == 0
    assert "StrategyConfig" in json.loads((tmp_path / "schema.json").read_text())["$defs"]


def test_doctor_reports_versions_and_packaged_mirrors(capsys):
    main(["doctor"])
    out = capsys.readouterr().out
    assert "transformers" in out and "mirror sentence-transformers/all-MiniLM-L6-v2:" in out
    assert "mirror bbc-news:" in out


def test_bad_recipe_is_one_line_error_with_exit_code_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: m\ndata: {source: x}\nstrategy: {kind: lorra}\n", encoding="utf-8")
    assert main(["train", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "strategy.kind" in err and "Traceback" not in err


def test_existing_output_folder_error_through_the_cli(trained, capsys):
    assert main(["train", str(trained / "recipe.yaml")]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_python_dash_m_entry_point_prints_help():
    result = subprocess.run(
        [sys.executable, "-m", "hf_transfer", "--help"], capture_output=True, text=True, env=python_env(), timeout=120
    )
    assert result.returncode == 0
    for command in ("train", "evaluate", "predict", "publish", "demo", "recipes", "doctor"):
        assert command in result.stdout
