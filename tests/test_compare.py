"""`hf-transfer compare`: strategies under one budget, the files it writes, numbers that match each run's metrics.json,
plots with one point per strategy, the winner's card, and spec errors that name the spec."""

import json
import time

import pytest
import torch
from conftest import recipe_yaml
from PIL import Image

from hf_transfer.cli import main
from hf_transfer.compare import PLOTS, RESULT_KEYS, PeakMemory, compare, parse_spec, recipe_tree_with, write_plots
from hf_transfer.errors import OutputDirError
from hf_transfer.hub import publish_files, render_model_card
from hf_transfer.recipe import RecipeError, load_recipe, recipe_from_dict

SPECS = ["head", "partial:1", "lora:4"]


@pytest.fixture(scope="module")
def compared(tmp_path_factory, tiny_bert, sentiment_folder):
    """One comparison of three strategies, shared by the tests that read it (the runs are the slow part)."""
    tmp_path = tmp_path_factory.mktemp("compare")
    recipe = recipe_yaml(
        tmp_path / "recipe.yaml", tiny_bert, sentiment_folder, tmp_path / "out", training={"epochs": 1}
    )
    out = tmp_path / "comparison"
    results = compare(recipe, ",".join(SPECS), ["training.seed=1"], output_dir=out)
    return recipe, out, results


def test_compare_writes_the_report_and_its_numbers_are_each_runs_metrics(compared):
    recipe, out, results = compared
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["results.json", "results.md", *PLOTS.values(), "head", "partial-1", "lora-4", ".hf_transfer-compare"]
    )
    saved = json.loads((out / "results.json").read_text())
    assert saved == results and [r["strategy"] for r in saved] == SPECS
    for row, folder in zip(saved, ["head", "partial-1", "lora-4"], strict=True):
        assert set(RESULT_KEYS) <= set(row)
        metrics = json.loads((out / folder / "metrics.json").read_text())
        assert row["accuracy"] == metrics["test"]["accuracy"] and row["split"] == "test"
        assert row["macro_f1"] == metrics["test"]["f1_macro"]
        assert row["trainable_params"] == metrics["train"]["trainable_params"]
        assert row["wall_s"] == metrics["train"]["wall_s"]
        assert row["peak_mem_mb"] > 50  # a resident Python with torch; sampled during this run
        run_recipe = load_recipe(out / folder / "recipe.yaml")
        assert (run_recipe.training.seed, run_recipe.training.epochs) == (1, 1)  # one budget for every run
    kinds = [load_recipe(out / f / "recipe.yaml").strategy for f in ("head", "partial-1", "lora-4")]
    assert [k.kind for k in kinds] == ["head", "partial", "lora"] and kinds[1].layers == 1 and kinds[2].r == 4
    head, partial, lora = saved
    assert head["trainable_params"] < partial["trainable_params"] < head["total_params"]

    table = (out / "results.md").read_text()
    for row in saved:
        assert (
            f"| {row['accuracy']:.4f} | {row['macro_f1']:.4f} | {row['trainable_params']:,} | {row['wall_s']:.1f} |"
            in table
        )
    assert f"![Accuracy against trainable parameters]({PLOTS['params']})" in table

    for name in PLOTS.values():
        with Image.open(out / name) as image:
            image.verify()
        with Image.open(out / name) as image:
            assert image.size == (600, 400)
    plotted = write_plots(saved, out)  # the points matplotlib holds, read back from its artists
    assert plotted["params"] == [(r["strategy"], r["trainable_params"], r["accuracy"]) for r in saved]
    assert plotted["time"] == [(r["strategy"], r["wall_s"], r["accuracy"]) for r in saved]


def test_the_winner_carries_the_comparison_into_its_model_card(compared):
    _, out, results = compared
    best = max(results, key=lambda r: (r["accuracy"], -r["trainable_params"], -r["wall_s"]))
    winner = out / best["output_dir"].rsplit("/", 1)[-1]
    losers = [out / r["output_dir"].rsplit("/", 1)[-1] for r in results if r is not best]
    assert (winner / "strategy_comparison.md").is_file() and (winner / "strategy_comparison.png").is_file()
    assert not any((loser / "strategy_comparison.md").exists() for loser in losers)
    card = render_model_card(winner).content
    section = card.split("## Strategy comparison", 1)[1]
    assert "![Accuracy against trainable parameters](strategy_comparison.png)" in section
    assert all(f"`{r['strategy']}`" in section for r in results)
    assert "## Strategy comparison" in (winner / "README.md").read_text()  # the draft card was rewritten
    assert {"strategy_comparison.md", "strategy_comparison.png"} <= set(publish_files(winner, adapter=False))
    assert "## Strategy comparison" not in render_model_card(losers[0]).content


def test_a_second_comparison_into_the_same_folder_needs_overwrite(compared, capsys):
    recipe, out, _ = compared
    stamp = (out / "head" / "metrics.json").stat().st_mtime_ns
    with pytest.raises(OutputDirError, match="--overwrite"):
        compare(recipe, "head,full", output_dir=out)
    assert main(["compare", str(recipe), "--strategies", "full,head", "--output-dir", str(out)]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert (out / "head" / "metrics.json").stat().st_mtime_ns == stamp and not (out / "full").exists()


@pytest.mark.parametrize("spec", ["partial:x", "head:2", "lora:0", "full@abc", "frozen", "partial:-1"])
def test_an_invalid_spec_names_itself_and_the_allowed_forms(make_recipe, tmp_path, capsys, spec):
    recipe = make_recipe()
    with pytest.raises(RecipeError, match="partial:N") as error:
        compare(recipe, f"head,{spec}", output_dir=tmp_path / "c")
    assert repr(spec) in str(error.value)
    assert main(["compare", str(recipe), "--strategies", f"head,{spec}", "--output-dir", str(tmp_path / "c")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and repr(spec) in lines[0]
    assert not (tmp_path / "c").exists()  # nothing trained


def test_a_partial_spec_deeper_than_the_model_and_duplicates_fail_before_any_run(make_recipe, tmp_path):
    recipe = make_recipe()
    with pytest.raises(RecipeError, match="'partial:3' unlocks 3 layers but .* has 2"):
        compare(recipe, "head,partial:3", output_dir=tmp_path / "c")
    with pytest.raises(RecipeError, match="'head' is listed twice"):
        compare(recipe, "head,lora,head", output_dir=tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_specs_turn_any_base_recipe_into_a_valid_recipe_of_their_kind(make_recipe):
    lbfgs = load_recipe(make_recipe(strategy={"kind": "head", "pooling": "mean", "head": {"type": "lbfgs"}}))
    llrd = load_recipe(
        make_recipe(
            "b.yaml", strategy={"kind": "partial", "layers": 2, "unfreeze_every": 1}, training={"layer_lr_decay": 0.8}
        )
    )
    for base in (lbfgs, llrd):
        for spec in ("head", "partial:1", "lora", "lora:8", "full@5e-5"):
            kind, overrides = parse_spec(spec, base)
            variant = recipe_from_dict(recipe_tree_with(base, overrides))
            assert variant.strategy.kind == kind
    head = recipe_from_dict(recipe_tree_with(llrd, parse_spec("head", llrd)[1]))
    assert head.strategy.layers is None and head.training.layer_lr_decay is None
    lora = recipe_from_dict(recipe_tree_with(lbfgs, parse_spec("lora:8", lbfgs)[1]))
    assert (lora.strategy.r, lora.strategy.alpha, lora.strategy.head.type) == (8, None, "linear")
    assert recipe_from_dict(recipe_tree_with(lbfgs, parse_spec("full@5e-5", lbfgs)[1])).training.lr == 5e-5
    assert recipe_from_dict(recipe_tree_with(llrd, parse_spec("partial", llrd)[1])).strategy.layers == 2


def test_peak_memory_sees_an_allocation_that_is_freed_before_the_end():
    with PeakMemory(torch.device("cpu")) as before:
        time.sleep(0.1)
    with PeakMemory(torch.device("cpu")) as during:
        block = torch.ones(64 * 2**20 // 4 * 4)  # 256 MiB, touched
        time.sleep(0.2)
        del block
    assert during.megabytes - before.megabytes > 200
