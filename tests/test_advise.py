"""`hf-transfer advise` on constructed data whose answer is known: separable at the top layer (head), labels no frozen
feature can express (deeper), a shifted vocabulary (the distance figures rise); the files it writes; its refusals."""

import json
import random

import pytest
from conftest import FILLER, write_csv

from hf_transfer.advise import advise, tokenizer_rates
from hf_transfer.cli import main
from hf_transfer.recipe import RecipeError, load_recipe
from hf_transfer.recommend import recommend


def xor_rows(n: int, seed: int) -> list[tuple[str, str]]:
    """The label is the XOR of two word choices among filler: the bag of words, and so any mean of (near-linear)
    frozen token features, is the same mixture for both labels; only layers that learn to combine words can fit it."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = i % 2, (i // 2) % 2
        words = rng.sample(FILLER, 6) + ["great" if a else "awful", "song" if b else "book"]
        rng.shuffle(words)
        rows.append((" ".join(words), "odd" if a ^ b else "even"))
    return rows


def shifted_rows(n: int, seed: int) -> list[tuple[str, str]]:
    """Made-up words and symbols the vocabulary has never seen, the label decided by one of two marker words."""
    rng = random.Random(seed)
    letters = "qxzjkvwbfgh"
    rows = []
    for i in range(n):
        label = "a" if i % 2 == 0 else "b"
        words = ["".join(rng.choice(letters) for _ in range(rng.randint(5, 9))) for _ in range(6)]
        words += ["⟁⟟⟒", "𓂀𓃠"][: rng.randint(1, 2)] + ["zqxvj" if label == "a" else "kkwfv"] * 2
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    made = {}
    for name, maker in (("xor", xor_rows), ("shifted", shifted_rows)):
        folder = tmp_path_factory.mktemp(name)
        write_csv(folder / "train.csv", maker(160, 1))
        write_csv(folder / "validation.csv", maker(40, 2))
        made[name] = folder
    return made


def _advise(make_recipe, tmp_path, name, **sections):
    recipe = make_recipe(f"{name}.yaml", **sections)
    return advise(recipe, output_dir=tmp_path / f"{name}-advise", sample=400), recipe


def test_separable_at_the_top_layer_recommends_head_and_writes_the_report(make_recipe, tmp_path):
    cache = tmp_path / "cache"
    recipe = make_recipe(strategy={"kind": "lora", "feature_cache": str(cache)})
    out = tmp_path / "advice"
    report = advise(recipe, ["training.seed=3"], output_dir=out, sample=400, write_recipe=tmp_path / "best.yaml")

    assert sorted(p.name for p in out.iterdir()) == [".hf_transfer-advise", "advise.json", "advise.md"]
    saved = json.loads((out / "advise.json").read_text())
    assert saved["recommendation"]["strategy"] == report["recommendation"]["strategy"] == "head"
    assert saved["data"]["examples_per_class"] == {"neg": 48, "pos": 48}
    assert saved["data"]["imbalance"] == 1.0 and saved["data"]["majority_rate"] == 0.5
    assert saved["data"]["truncated_fraction"] == 0.0  # 7 words + 2 special tokens, max_length 32
    # One probe per hidden state of the 2-layer BERT, counted as strategies.parameter_depths counts layers.
    assert [(p["name"], p["layers_above"]) for p in saved["probe"]] == [
        ("embeddings", 2),
        ("layer 1", 1),
        ("layer 2", 0),
    ]
    assert saved["probe"][-1]["accuracy"] >= 0.9
    assert saved["domain"]["frozen_top_layer_skill"] >= 0.8
    estimates = saved["estimates"]
    assert estimates["head"]["trainable_params"] < estimates["partial:1"]["trainable_params"]
    assert estimates["partial:1"]["trainable_params"] < estimates["full"]["trainable_params"]
    assert saved["recommendation"]["estimate"] == estimates["head"]

    text = (out / "advise.md").read_text()
    assert "**Recommendation: `head`**" in text
    for figure in (
        "rows per class",
        "imbalance",
        "rows truncated at max_length 32",
        "unknown-token rate",
        "words split into pieces",
        "frozen top-layer probe accuracy",
        "| layer 2 | 0 |",
    ):
        assert figure in text

    written = (tmp_path / "best.yaml").read_text()
    assert written.startswith(f"# accelerate launch -m hf_transfer train {tmp_path / 'best.yaml'}\n")
    best = load_recipe(tmp_path / "best.yaml")
    assert best.strategy.kind == "head" and best.training.lr == 5e-3 and best.training.seed == 3
    assert best.strategy.pooling == "mean"  # the head reads the features the probe scored, not BERT's pooler

    # Every layer's features went through the embedding cache, one file per hidden state; a rerun reads them back.
    layers = sorted(json.loads(p.read_text())["key"]["layer"] for p in cache.rglob("advise-*.json"))
    assert layers == ["hidden_states[0]", "hidden_states[1]", "hidden_states[2]"]
    again = advise(recipe, ["training.seed=3"], output_dir=tmp_path / "again", sample=400)
    assert again["probe"] == report["probe"]


def test_labels_only_deep_fine_tuning_can_fit_recommend_adapting_every_layer(make_recipe, tmp_path, folders):
    report, _ = _advise(make_recipe, tmp_path, "xor", data={"source": str(folders["xor"])})
    assert max(p["accuracy"] for p in report["probe"]) < 0.7  # no frozen layer separates XOR
    recommendation = report["recommendation"]
    # 160 training rows: too few to update every weight, so LoRA adapts every layer.
    assert (recommendation["strategy"], recommendation["r"]) == ("lora", 8)
    assert any("every layer" in reason for reason in recommendation["reasons"])


def test_shifted_vocabulary_raises_the_distance_figures(make_recipe, tmp_path, folders):
    english, _ = _advise(make_recipe, tmp_path, "english")
    shifted, _ = _advise(make_recipe, tmp_path, "shifted", data={"source": str(folders["shifted"])})
    assert english["domain"]["reference"] == shifted["domain"]["reference"]  # the same tokenizer, the same reference
    near, far = english["domain"]["data"], shifted["domain"]["data"]
    # Made-up words fall apart into pieces (5 per word against 1.02), and the symbols are unknown tokens.
    assert near["unknown_token_rate"] == 0 < 0.02 < far["unknown_token_rate"]
    assert far["split_word_rate"] > 0.5 > 0.05 > near["split_word_rate"]
    assert far["pieces_per_word"] > 4 > 1.1 > near["pieces_per_word"]
    assert shifted["domain"]["unknown_token_rate_excess"] > 0.02
    assert shifted["domain"]["split_word_rate_excess"] > 0.5 > 0.05 > english["domain"]["split_word_rate_excess"]
    assert any("far from the tokenizer's training text" in r for r in shifted["recommendation"]["reasons"])
    assert not any("far from the tokenizer's training text" in r for r in english["recommendation"]["reasons"])


def test_tokenizer_rates_count_unknown_tokens_and_split_words(tiny_bert):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    assert tokenizer_rates(tokenizer, ["the film was good"]) == {
        "unknown_token_rate": 0.0,
        "split_word_rate": 0.0,
        "pieces_per_word": 1.0,
    }
    rates = tokenizer_rates(tokenizer, ["𓂀 qxzjkv"])  # one unknown symbol, one word in several pieces
    assert rates["unknown_token_rate"] > 0 and rates["split_word_rate"] == 0.5


def _curve(accuracies, std=0.01):
    top = len(accuracies) - 1
    return [
        {
            "layer": i,
            "name": f"layer {i}" if i else "embeddings",
            "layers_above": top - i,
            "accuracy": a,
            "accuracy_std": std,
            "folds": 5,
        }
        for i, a in enumerate(accuracies)
    ]


def test_recommendation_follows_where_the_useful_features_live():
    data = {"majority_rate": 0.5, "train_examples": 5000}
    # The best features are two layers below the top and the layers above lose accuracy: retrain those two.
    partial = recommend(_curve([0.6, 0.7, 0.8, 0.9, 0.92, 0.85, 0.75]), data)
    assert (partial["strategy"], partial["layers"], partial["spec"]) == ("partial", 2, "partial:2")
    # Best at the top and high: a head is enough; within the margin counts as the best.
    assert recommend(_curve([0.6, 0.8, 0.9, 0.95, 0.96, 0.97, 0.965]), data)["spec"] == "head"
    # Best at the top and nearly enough (skill 0.7): adapt the top third of the layers.
    assert recommend(_curve([0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85]), data)["spec"] == "partial:2"
    # Best at the top but far from enough (skill 0.56): no depth has the features, every layer adapts.
    assert recommend(_curve([0.55, 0.6, 0.65, 0.7, 0.72, 0.75, 0.78]), data)["spec"] == "lora:16"
    # Nothing beats guessing: every layer adapts — fully with plenty of data, through LoRA otherwise.
    weak = _curve([0.5, 0.52, 0.53, 0.51, 0.52, 0.5, 0.51])
    assert recommend(weak, {"majority_rate": 0.5, "train_examples": 50_000})["spec"] == "full"
    assert recommend(weak, {"majority_rate": 0.5, "train_examples": 5000})["spec"] == "lora:16"
    # The same accuracies on imbalanced data (90 % majority) are no skill at all.
    assert recommend(_curve([0.9, 0.91, 0.9]), {"majority_rate": 0.9, "train_examples": 500})["spec"] == "lora:8"


@pytest.mark.parametrize(
    "task, message",
    [
        ("image-classification", "supports text tasks for now"),
        ("multi-label-classification", "task 'multi-label-classification'"),
        ("text-regression", "task 'text-regression'"),
    ],
)
def test_other_tasks_get_one_clear_error_line(make_recipe, tmp_path, capsys, task, message):
    recipe = make_recipe()
    with pytest.raises(RecipeError, match=message):
        advise(recipe, [f"task={task}"], output_dir=tmp_path / "a")
    assert main(["advise", str(recipe), f"task={task}", "--output-dir", str(tmp_path / "a")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: ") and message in error[0]
    assert not (tmp_path / "a").exists()


def test_cli_prints_the_recommendation(make_recipe, tmp_path, capsys):
    recipe = make_recipe()
    out = tmp_path / "advice"
    assert main(["advise", str(recipe), "--output-dir", str(out), "--sample", "200"]) == 0
    printed = capsys.readouterr().out
    assert "recommended: head" in printed and str(out / "advise.md") in printed
    assert json.loads((out / "advise.json").read_text())["data"]["sample_examples"] == 96


def test_pilot_trains_every_candidate_briefly_on_the_sample(make_recipe, tmp_path):
    out = tmp_path / "advice"
    report = advise(make_recipe(), output_dir=out, sample=40, pilot=True)
    pilot = json.loads((out / "pilot" / "results.json").read_text())
    assert report["pilot"] == pilot and [r["strategy"] for r in pilot] == ["head", "partial:1", "lora", "full"]
    assert json.loads((out / "advise.json").read_text())["pilot"] == pilot
    run = load_recipe(out / "pilot" / "full" / "recipe.yaml")
    assert (run.training.max_train_samples, run.training.epochs) == (40, 1)
    assert "## Pilot (one epoch on the sample)" in (out / "advise.md").read_text()
