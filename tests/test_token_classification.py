"""Token classification (NER): data readers, BIO checks, sub-word alignment, entity metrics, every strategy on a tiny
BERT, predict = the transformers pipeline (local folder and published repo), the card, the Space, and the packaged
MiniLM on a slice of CoNLL-2003."""

import json
import math
import random
from pathlib import Path

import pytest
import torch
import yaml
from conftest import SHARED_DATA, minilm_path, recipe_yaml
from hub_server import hub_env, run_client
from safetensors.torch import load_file

from hf_transfer.errors import DataError, RecipeError, StrategyError, TrainingError
from hf_transfer.metrics import compute_metrics
from hf_transfer.recipe import load_recipe
from hf_transfer.sampling import class_weights, weighted_loss
from hf_transfer.tasks import task_for
from hf_transfer.tasks.token_classification import align_labels
from hf_transfer.tasks.token_data import entity_spans, orphan_positions, word_entities
from hf_transfer.train import train

CONLL = SHARED_DATA / "conll2003"
needs_conll = pytest.mark.skipif(not CONLL.is_dir(), reason=f"CoNLL-2003 not found at {CONLL} (../shared/data)")
PEOPLE = ["John", "Mary", "Ahmed", "Olga", "Pierre", "Ana"]
PLACES = ["Paris", "Berlin", "Tokyo", "Lagos", "Lima"]
ORGS = ["Reuters", "Siemens", "UNESCO", "Fiat"]
FILLER = ["the", "said", "on", "Monday", "that", "in", "visited", "met", "with", "a", "report", "today"]


def ner_rows(n: int, seed: int) -> list[dict]:
    """Sentences of filler words with person (two words), place and organisation names: learnable in a few steps."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        tokens, tags = [], []
        for _ in range(rng.randint(3, 8)):
            draw = rng.random()
            if draw < 0.15:
                tokens += [rng.choice(PEOPLE), "Smith"]
                tags += ["B-PER", "I-PER"]
            elif draw < 0.3:
                tokens.append(rng.choice(PLACES))
                tags.append("B-LOC")
            elif draw < 0.4:
                tokens.append(rng.choice(ORGS))
                tags.append("B-ORG")
            else:
                tokens.append(rng.choice(FILLER))
                tags.append("O")
        rows.append({"tokens": tokens, "ner_tags": tags})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def ner_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ner")
    for name, n, seed in (("train", 120, 1), ("validation", 30, 2), ("test", 30, 3)):
        write_jsonl(folder / f"{name}.jsonl", ner_rows(n, seed))
    return folder


def ner_recipe(path: Path, model: Path | str, source: Path | str, out: Path, **sections) -> Path:
    """conftest's small recipe, as a token-classification one trained 3 epochs unless `sections` say otherwise."""
    sections = {"task": "token-classification", **sections}
    sections["training"] = {"epochs": 3, **sections.get("training", {})}
    return recipe_yaml(path, model, source, out, **sections)


def prepared(tmp_path: Path, source: Path | str, **sections):
    recipe = load_recipe(ner_recipe(tmp_path / "r.yaml", "unused", source, tmp_path / "out", **sections))
    return task_for("token-classification").prepare_data(recipe)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_bert, ner_folder) -> dict[str, Path]:
    """One tiny-BERT run per strategy on the generated sentences."""
    tmp = tmp_path_factory.mktemp("ner-runs")
    cache = tmp / "features"
    kinds = {
        "full": {"strategy": {"kind": "full"}},
        "head": {"strategy": {"kind": "head", "feature_cache": str(cache)}, "training": {"epochs": 8, "lr": 5e-2}},
        "lora": {"strategy": {"kind": "lora", "r": 4}, "training": {"epochs": 4}},
        "partial": {
            "strategy": {"kind": "partial", "layers": 1, "unfreeze_every": 1},
            "training": {"layer_lr_decay": 0.5},
        },
    }
    out = {}
    for name, sections in kinds.items():
        recipe = ner_recipe(tmp / f"{name}.yaml", tiny_bert, ner_folder, tmp / name, **sections)
        out[name] = train(load_recipe(recipe))
    return out


# -- data -------------------------------------------------------------------------------------------------------------


def test_jsonl_string_tags_become_the_contract_with_tags_from_train(tmp_path, ner_folder):
    data = prepared(tmp_path, ner_folder)
    assert data.labels.id2label == dict(enumerate(["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]))
    first = json.loads((ner_folder / "train.jsonl").read_text().splitlines()[0])
    row = data.splits["train"][0]
    assert row["tokens"] == first["tokens"]
    assert [data.labels.id2label[i] for i in row["label"]] == first["ner_tags"]
    assert {name: len(s) for name, s in data.splits.items()} == {"train": 120, "validation": 30, "test": 30}


def test_conll_text_files_skip_docstart_and_split_on_blank_lines(tmp_path):
    text = (
        "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\nGerman JJ B-NP B-MISC\n\n"
        "Peter NNP B-NP B-PER\n"
    )
    (tmp_path / "train.conll").write_text(text, encoding="utf-8")
    data = prepared(tmp_path, tmp_path / "train.conll", training={"seed": 0})
    rows = [*data.splits["train"], *data.splits["validation"]]
    names = data.labels.id2label
    assert sorted((r["tokens"], [names[i] for i in r["label"]]) for r in rows) == [
        (["EU", "rejects", "German"], ["B-ORG", "O", "B-MISC"]),
        (["Peter"], ["B-PER"]),
    ]


def test_hub_style_sequence_classlabel_tags_keep_their_names_and_order(tmp_path):
    from datasets import ClassLabel, Dataset, Features, Sequence, Value

    names = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
    features = Features({"tokens": Sequence(Value("string")), "ner_tags": Sequence(ClassLabel(names=names))})
    rows = {"tokens": [["Ann", "Lee", "left"], ["Bonn"]], "ner_tags": [[1, 2, 0], [5]]}
    for split in ("train", "validation"):
        Dataset.from_dict(rows, features=features).to_parquet(str(tmp_path / f"{split}.parquet"))
    data = prepared(tmp_path, tmp_path)
    assert list(data.labels.id2label.values()) == names
    assert data.splits["train"][0]["label"] == [1, 2, 0]


def test_orphan_i_tags_are_counted_or_repaired(tmp_path, caplog):
    rows = ner_rows(20, 4) + [{"tokens": ["in", "Rome", "today"], "ner_tags": ["O", "I-LOC", "O"]}]
    write_jsonl(tmp_path / "train.jsonl", rows)
    kept = prepared(tmp_path, tmp_path / "train.jsonl")
    assert kept.labels.skipped == {"train_i_tags_without_entity": 1}
    assert "split 'train': 1 I-X tags continue no entity (at row 20 word 1 (I-LOC)): kept as written" in caplog.text
    repaired = prepared(tmp_path, tmp_path / "train.jsonl", data={"repair_tags": True})
    names = repaired.labels.id2label
    row = next(r for r in [*repaired.splits["train"], *repaired.splits["validation"]] if "Rome" in r["tokens"])
    assert [names[i] for i in row["label"]] == ["O", "B-LOC", "O"]


def test_entity_spans_and_offsets():
    assert entity_spans(["B-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-LOC"]) == [
        ("PER", 0, 2),
        ("LOC", 3, 4),
        ("LOC", 4, 6),
    ]
    assert orphan_positions(["I-PER", "I-PER", "B-LOC", "I-ORG"]) == [0, 3]
    text, entities = word_entities(["Ann", "Lee", "in", "New", "York"], ["B-PER", "I-PER", "O", "B-LOC", "I-LOC"])
    assert [(e["type"], e["text"], text[e["start"] : e["end"]]) for e in entities] == [
        ("PER", "Ann Lee", "Ann Lee"),
        ("LOC", "New York", "New York"),
    ]


# -- bad input: one clear error naming the split, row or key ----------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"tokens": ["a", "b"], "ner_tags": ["O"]}, r"split 'train', row 3: 2 words but 1 tags \(data.tokens_column"),
        ({"tokens": [], "ner_tags": []}, r"split 'train', row 3: the list of words is empty \(data.tokens_column"),
        (
            {"tokens": ["a", "b"], "ner_tags": "O O"},
            r"split 'train', row 3: data.tags_column 'ner_tags' holds 'O O', not a list of one tag per word",
        ),
        (
            {"tokens": ["Ann", "Lee"], "ner_tags": ["S-PER", "E-PER"]},
            r"split 'train', row 3, word 0: tag 'S-PER' is not BIO/IOB2",
        ),
        ({"tokens": ["Ann"], "ner_tags": ["PER"]}, r"split 'train', row 3, word 0: tag 'PER' is not BIO/IOB2"),
    ],
)
def test_bad_rows_are_one_clear_error(tmp_path, row, message):
    write_jsonl(tmp_path / "train.jsonl", [*ner_rows(3, 5), row])
    with pytest.raises(DataError, match=message):
        prepared(tmp_path, tmp_path / "train.jsonl")


def test_an_evaluation_tag_never_seen_in_train_is_named(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", ner_rows(10, 6))
    write_jsonl(tmp_path / "validation.jsonl", [*ner_rows(2, 7), {"tokens": ["Euro"], "ner_tags": ["B-MISC"]}])
    with pytest.raises(DataError, match=r"split 'validation', row 2: tag 'B-MISC' never occurs in train; known tags"):
        prepared(tmp_path, tmp_path)


def test_text_classification_data_under_the_ner_task_and_the_reverse(tmp_path, ner_folder):
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "train.csv").write_text("text,label\ngood film,pos\nbad film,neg\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"no column 'tokens' \(data.tokens_column\).*text-classification data\?"):
        prepared(tmp_path, tmp_path / "text")
    with pytest.raises(DataError, match=r"row 0: data.tokens_column 'text' holds 'good film', not a list of words"):
        prepared(tmp_path, tmp_path / "text", data={"tokens_column": "text", "tags_column": "label"})
    from hf_transfer.tasks import prepare_data

    recipe = ner_recipe(tmp_path / "t.yaml", "unused", ner_folder, tmp_path / "o", task="text-classification")
    with pytest.raises(DataError, match=r"no column 'text' \(data.text_column\).*token-classification data\?"):
        prepare_data(load_recipe(recipe))


def test_token_keys_are_refused_on_other_tasks(tmp_path, ner_folder):
    path = ner_recipe(tmp_path / "t.yaml", "m", ner_folder, tmp_path / "o", task="text-classification")
    with pytest.raises(RecipeError, match="data.label_all_subwords applies to task 'token-classification' only"):
        load_recipe(path, ["data.label_all_subwords=true"])


def test_the_balanced_sampler_is_refused_per_token_naming_the_key(tmp_path, tiny_bert, ner_folder):
    recipe = ner_recipe(tmp_path / "s.yaml", tiny_bert, ner_folder, tmp_path / "s")
    refusal = (
        r"training.balanced_sampler applies to single-label classification, not task 'token-classification': it "
        r"draws each row by its one class, and a row of this task has none; weight the loss by class with "
        r"training.class_weights instead"
    )
    with pytest.raises(TrainingError, match=refusal):
        train(load_recipe(recipe, ["training.balanced_sampler=true"]))
    assert not (tmp_path / "s").exists()


def test_lp_ft_is_refused_for_a_token_model_without_a_classifier(tiny_bert, ner_folder, tmp_path):
    from transformers import AutoModelForTokenClassification

    from hf_transfer.strategies import check_strategy

    recipe = load_recipe(ner_recipe(tmp_path / "w.yaml", tiny_bert, ner_folder, tmp_path / "w"))
    recipe.strategy.warmup_head_epochs = 1
    model = AutoModelForTokenClassification.from_pretrained(tiny_bert, num_labels=3)
    task = task_for("token-classification")
    check_strategy(model, recipe, task)  # BERT's token classifier warms up
    model.score = model.classifier  # the name some architectures give their head
    del model.classifier
    with pytest.raises(StrategyError, match=r"strategy.warmup_head_epochs trains the model's `classifier` on cached"):
        check_strategy(model, recipe, task)


# -- alignment and metrics --------------------------------------------------------------------------------------------


def test_first_sub_word_carries_the_tag_and_the_rest_are_ignored_or_inside():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    encoded = tokenizer([["EU-wide", "Kohl"]], is_split_into_words=True)
    pieces = tokenizer.convert_ids_to_tokens(encoded["input_ids"][0])
    assert pieces == ["[CLS]", "eu", "-", "wide", "ko", "##hl", "[SEP]"]
    word_ids = encoded.word_ids(0)
    b_org, i_org, b_per, i_per = 3, 4, 5, 6
    inside = {b_org: i_org, b_per: i_per}
    assert align_labels(word_ids, [b_org, b_per], inside, False) == [-100, 3, -100, -100, 5, -100, -100]
    assert align_labels(word_ids, [b_org, b_per], inside, True) == [-100, 3, 4, 4, 5, 6, -100]


def test_entity_metrics_match_seqeval_and_drop_ignored_positions():
    names = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    # Two sentences, padded with -100; one PER found, one LOC missed, one false LOC.
    references = torch.tensor([[1, 2, 0, 3, -100], [0, 3, 4, -100, -100]]).numpy()
    predictions = torch.tensor([[1, 2, 0, 0, 3], [3, 3, 4, 1, 1]]).numpy()
    scores = compute_metrics("token-classification", predictions, references, 5, names)
    assert scores["entities"] == 3 and scores["examples"] == 2
    assert scores["precision"] == pytest.approx(2 / 3) and scores["recall"] == pytest.approx(2 / 3)
    assert scores["per_class"]["PER"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    assert scores["per_class"]["LOC"]["support"] == 2 and scores["per_class"]["LOC"]["recall"] == 0.5
    assert scores["f1_macro"] == pytest.approx((1.0 + 0.5) / 2)
    assert scores["accuracy"] == pytest.approx(5 / 7)


# -- training, every strategy -----------------------------------------------------------------------------------------


def test_full_run_scores_entities_and_records_them(runs):
    metrics = json.loads((runs["full"] / "metrics.json").read_text())
    assert metrics["test"]["f1"] > 0.9 and metrics["test"]["entities"] > 40
    run = json.loads((runs["full"] / "run.json").read_text())
    assert run["task"] == "token-classification" and set(run["per_class"]) == {"LOC", "ORG", "PER"}
    config = json.loads((runs["full"] / "config.json").read_text())
    assert config["architectures"] == ["BertForTokenClassification"]
    assert config["id2label"]["5"] == "B-PER"
    example = run["examples"][0]
    assert example["label"] and {"type", "text", "start", "end"} <= set(example["label"][0])
    assert [(e["type"], e["start"], e["end"]) for e in example["prediction"]] == [
        (e["type"], e["start"], e["end"]) for e in example["label"]
    ]


def test_head_trains_only_the_classifier_on_cached_token_states(runs, tiny_bert, tmp_path, ner_folder):
    out = runs["head"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["trained_on"] == "features" and metrics["train"]["trainable_params"] == 32 * 7 + 7
    assert metrics["test"]["f1"] > 0.3
    saved, base = load_file(str(out / "model.safetensors")), load_file(str(tiny_bert / "model.safetensors"))
    for name, value in base.items():
        if not name.startswith("pooler"):
            assert torch.equal(saved["bert." + name], value), name
    # The same run again reads the states from the cache and trains the same head, bit for bit.
    cache = Path(yaml.safe_load((out / "recipe.yaml").read_text())["strategy"]["feature_cache"])
    stored = sorted(p.name.split("-")[0] for p in cache.rglob("*.safetensors"))
    assert stored == ["test", "train", "validation"]
    again = load_recipe(out / "recipe.yaml", output_dir=str(tmp_path / "again"))
    saved_again = load_file(str(train(again) / "model.safetensors"))
    assert torch.equal(saved_again["classifier.weight"], saved["classifier.weight"])


def test_lora_saves_an_adapter_and_a_merged_token_classifier(runs, tiny_bert):
    from peft import PeftModel
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    out = runs["lora"]
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter["task_type"] == "TOKEN_CLS" and "classifier" in adapter["modules_to_save"]
    merged = AutoModelForTokenClassification.from_pretrained(out).eval()
    base = AutoModelForTokenClassification.from_pretrained(tiny_bert, config=merged.config)
    with_adapter = PeftModel.from_pretrained(base, out / "adapter").eval()
    inputs = AutoTokenizer.from_pretrained(out)(["John Smith visited Paris"], return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(merged(**inputs).logits, with_adapter(**inputs).logits, atol=1e-5)


def test_partial_with_llrd_and_gradual_unfreezing_trains(runs, tiny_bert):
    saved = load_file(str(runs["partial"] / "model.safetensors"))
    base = load_file(str(tiny_bert / "model.safetensors"))
    assert torch.equal(saved["bert.encoder.layer.0.output.dense.weight"], base["encoder.layer.0.output.dense.weight"])
    assert not torch.equal(
        saved["bert.encoder.layer.1.output.dense.weight"], base["encoder.layer.1.output.dense.weight"]
    )


HEAD_OF = {
    "full": {"classifier.weight", "classifier.bias"},
    # LoRA: PEFT's trainable copy of the classifier (modules_to_save); the original and the adapters stay.
    "lora": {f"base_model.model.classifier.modules_to_save.default.{p}" for p in ("weight", "bias")},
}


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_lp_ft_warms_the_token_classifier_on_cached_states_then_fine_tunes(
    kind, runs, tiny_bert, ner_folder, tmp_path, monkeypatch, caplog
):
    import logging

    from hf_transfer import strategies
    from hf_transfer.inference import load_run, predict_inputs

    snapshots = []
    real_warm_up = strategies.warm_up_head

    def watched(accelerator, model, *args):
        snapshots.append({n: p.detach().clone() for n, p in model.named_parameters()})
        real_warm_up(accelerator, model, *args)
        snapshots.append({n: p.detach().clone() for n, p in model.named_parameters()})

    monkeypatch.setattr(strategies, "warm_up_head", watched)
    caplog.set_level(logging.INFO, logger="hf_transfer")
    # The head run's cache: the warm-up reads the same per-token states instead of running the backbone again.
    cache = yaml.safe_load((runs["head"] / "recipe.yaml").read_text())["strategy"]["feature_cache"]
    strategy = {"kind": kind, "warmup_head_epochs": 3, "warmup_head_lr": 5e-2, "feature_cache": cache}
    strategy.update({"r": 4} if kind == "lora" else {})
    recipe = ner_recipe(tmp_path / "r.yaml", tiny_bert, ner_folder, tmp_path / kind, strategy=strategy)
    out = train(load_recipe(recipe))

    before, after = snapshots
    assert {name for name in before if not torch.equal(before[name], after[name])} == HEAD_OF[kind]
    assert "feature cache hit: split 'train'" in caplog.text and "head warm-up: 3 epochs" in caplog.text
    # Then the fine-tuning proper: the backbone trains from there, and the folder is a working token classifier.
    saved, base = load_file(str(out / "model.safetensors")), load_file(str(tiny_bert / "model.safetensors"))
    assert not torch.equal(
        saved["bert.encoder.layer.1.output.dense.weight"], base["encoder.layer.1.output.dense.weight"]
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["f1"] > 0.8
    assert json.loads((out / "run.json").read_text())["task"] == "token-classification"
    found = predict_inputs(load_run(out), SENTENCES[:1])
    assert _spans(found[0]["entities"]) == [("PER", 0, 10), ("LOC", 19, 24)]


def test_per_token_class_weights_are_the_weighted_cross_entropy_by_hand():
    logits = torch.tensor(
        [
            [[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [9.0, 0.0, 0.0]],
            [[1.0, 1.0, 3.0], [0.0, 7.0, 0.0], [5.0, 5.0, 5.0]],
        ]
    )
    labels = torch.tensor([[0, 1, -100], [2, -100, -100]])  # -100: a later sub-word, special token or padding
    weight = torch.tensor([1.0, 3.0, 0.5])
    token_losses = [  # -log softmax at the true tag, the three labelled tokens
        math.log(1 + 2 * math.exp(-2)),
        math.log(2 + math.e) - 1,
        math.log(2 * math.e + math.exp(3)) - 3,
    ]
    by_hand = (1 * token_losses[0] + 3 * token_losses[1] + 0.5 * token_losses[2]) / (1 + 3 + 0.5)
    assert weighted_loss(logits, labels, weight).item() == pytest.approx(by_hand, rel=1e-6)
    unweighted = sum(token_losses) / 3  # the model's own loss: the mean over labelled tokens
    assert weighted_loss(logits, labels, torch.ones(3)).item() == pytest.approx(unweighted, rel=1e-6)
    assert by_hand != pytest.approx(unweighted)


def test_the_loop_weights_each_labelled_token_by_its_tag(tmp_path, tiny_bert, ner_folder, monkeypatch):
    from collections import Counter

    from hf_transfer import train as train_module

    seen = []

    def spy(logits, labels, class_weight):
        loss = weighted_loss(logits, labels, class_weight)
        kept = labels != -100
        log_p = torch.log_softmax(logits.detach().float(), dim=-1)[kept]
        w = class_weight[labels[kept]]
        by_hand = -(w * log_p[torch.arange(len(w)), labels[kept]]).sum() / w.sum()
        seen.append((class_weight.tolist(), loss.item(), by_hand.item(), logits.ndim))
        return loss

    monkeypatch.setattr(train_module, "weighted_loss", spy)
    recipe = ner_recipe(tmp_path / "r.yaml", tiny_bert, ner_folder, tmp_path / "out", training={"epochs": 1})
    out = train(load_recipe(recipe, ["training.class_weights=balanced"]))
    names = ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    train_rows = [json.loads(line) for line in (ner_folder / "train.jsonl").read_text().splitlines()]
    counts = Counter(tag for row in train_rows for tag in row["ner_tags"])
    words = sum(counts.values())
    assert len(seen) == 15  # every one of the 120 / 8 steps
    for weights, loss, by_hand, ndim in seen:
        assert weights == pytest.approx([words / (7 * max(counts[n], 1)) for n in names]) and ndim == 3
        assert loss == pytest.approx(by_hand, rel=1e-5)
    assert yaml.safe_load((out / "recipe.yaml").read_text())["training"]["class_weights"] == "balanced"


def test_class_weights_count_word_level_tags_and_name_an_unknown_tag(tmp_path, tiny_bert, ner_folder):
    id2label = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC"}
    tags = [[1, 2, 0, 0, 3], [0, 0, 3], [1, 2]]  # 10 words: 4 O, 2 B-PER, 2 I-PER, 2 B-LOC
    recipe = load_recipe(ner_recipe(tmp_path / "c.yaml", "m", ner_folder, tmp_path / "c"))
    recipe.training.class_weights = "balanced"
    counts = [4, 2, 2, 2]
    assert class_weights(recipe, tags, id2label).tolist() == pytest.approx([10 / (4 * c) for c in counts])
    recipe.training.class_weights = {"B-LOC": 4.0}
    assert class_weights(recipe, tags, id2label).tolist() == [1.0, 1.0, 1.0, 4.0]
    weighted = ner_recipe(tmp_path / "w.yaml", tiny_bert, ner_folder, tmp_path / "w")
    with pytest.raises(
        TrainingError, match=r"training.class_weights names 'B-PERSON', not a label; labels: \['B-LOC'"
    ):
        train(load_recipe(weighted, ["training.class_weights={B-PERSON: 2}"]))


def test_truncated_words_and_entities_are_counted_in_run_json(tmp_path, tiny_bert):
    long = {"tokens": ["the"] * 10 + ["Paris", "Berlin"], "ner_tags": ["O"] * 10 + ["B-LOC", "B-LOC"]}
    write_jsonl(tmp_path / "train.jsonl", [*ner_rows(30, 8), long])
    write_jsonl(tmp_path / "validation.jsonl", ner_rows(8, 9))
    recipe = ner_recipe(tmp_path / "r.yaml", tiny_bert, tmp_path, tmp_path / "out", training={"epochs": 1})
    out = train(load_recipe(recipe, ["data.max_length=10"]))
    skipped = json.loads((out / "run.json").read_text())["dataset"]["skipped"]
    assert skipped["train_truncated_sentences"] >= 1
    # The long sentence keeps 8 of its 12 words ([CLS] + 8 + [SEP]): both of its entities are cut.
    assert skipped["train_truncated_words"] >= 4 and skipped["train_truncated_entities"] >= 2
    assert json.loads((out / "metrics.json").read_text())["train"]["skipped_train_truncated_entities"] >= 2


# -- predict, evaluate, card, publish, Space --------------------------------------------------------------------------

SENTENCES = ["John Smith visited Paris on Monday", "the report said that Siemens met Olga Smith in Lagos"]


def _spans(entities: list[dict]) -> list[tuple]:
    return [(e["type"], e["start"], e["end"]) for e in entities]


def test_predict_cli_prints_entities_with_offsets(runs, capsys):
    from hf_transfer.cli import main

    assert main(["predict", str(runs["full"]), *SENTENCES, "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert _spans(results[0]["entities"]) == [("PER", 0, 10), ("LOC", 19, 24)]
    assert [e["text"] for e in results[1]["entities"]] == ["Siemens", "Olga Smith", "Lagos"]
    assert main(["predict", str(runs["full"]), SENTENCES[0]]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("PER 'John Smith' 0-10 ") and ", LOC 'Paris' 19-24 " in line and line.endswith(SENTENCES[0])


@pytest.mark.parametrize("aggregation", ["first", "simple"])
def test_the_local_folder_through_the_pipeline_gives_predicts_spans(runs, aggregation):
    from transformers import pipeline

    from hf_transfer.inference import load_run, predict_inputs

    ours = predict_inputs(load_run(runs["lora"]), SENTENCES)
    tagger = pipeline("token-classification", model=str(runs["lora"]), aggregation_strategy=aggregation)
    assert [_spans(r["entities"]) for r in ours] == [
        [(e["entity_group"], e["start"], e["end"]) for e in found] for found in tagger(SENTENCES)
    ]
    assert any(r["entities"] for r in ours)


def test_an_onnx_export_tags_the_same_spans_without_the_pipelines_class_complaint(runs, tmp_path):
    import shutil
    import subprocess
    import sys

    pytest.importorskip("onnxruntime")
    from hf_transfer.cli import main

    folder = tmp_path / "full"
    shutil.copytree(runs["full"], folder, ignore=shutil.ignore_patterns("checkpoints"))
    assert main(["export", str(folder), "--int8"]) == 0
    manifest = json.loads((folder / "onnx" / "manifest.json").read_text())
    assert manifest["calibration"]["source"] == "validation"
    # A tag per token: no one answer per row for the int8 guard to recheck (tokens would send most rows to fp32).
    assert "guard" not in manifest["variants"]["onnx-int8"] and manifest["variants"]["onnx"]["parity"]["passed"]
    spans = {}
    for runtime in ("torch", "onnx", "onnx-int8"):
        # As a user runs it: the pipeline's complaint goes to transformers' own stderr handler.
        command = [sys.executable, "-m", "hf_transfer", "predict", str(folder), *SENTENCES, "--json"]
        done = subprocess.run([*command, "--runtime", runtime], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        spans[runtime] = [_spans(r["entities"]) for r in json.loads(done.stdout)]
        assert "is not supported for token-classification" not in done.stderr
    assert spans["onnx"] == spans["torch"] and spans["torch"][0] == [("PER", 0, 10), ("LOC", 19, 24)]
    assert spans["onnx-int8"] == spans["torch"]


def test_evaluate_rescores_the_saved_model(runs):
    from hf_transfer.inference import evaluate_run

    scores = evaluate_run(runs["full"], split="test")
    saved = json.loads((runs["full"] / "metrics.json").read_text())["test"]
    assert scores["f1"] == pytest.approx(saved["f1"]) and scores["entities"] == saved["entities"]


@pytest.mark.slow
def test_two_processes_score_tokens_exactly_as_one(runs, tmp_path):
    """Sentences sharded over 2 real processes (`accelerate launch`, gloo), batches padded to different widths on each
    rank and a last batch that Accelerate fills with repeated sentences: the same entity F1, token accuracy and
    predictions as 1 process. (Real launched processes, not pytest forked: a fork after torch's thread pool has run
    can hang in the child.)"""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from conftest import run_two_ranks
    from two_ranks import score_tokens, token_split

    out = runs["head"]  # an imperfect tagger: F1 well above 0, with errors for a wrong gather to shift
    encoded, model, task, num_labels = token_split(out)
    widths = [
        len(encoded.collator([encoded.splits["test"][i] for i in range(k, min(k + 4, 21))])["labels"][0])
        for k in range(0, 21, 4)
    ]
    assert widths[0] < widths[1] and widths[2] < widths[3], widths  # the ranks' batches differ in width
    run_two_ranks(tmp_path, "tokens", out / "recipe.yaml", tmp_path)
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        one, predictions = score_tokens(Accelerator(cpu=True), encoded, model, task, num_labels)
    finally:  # the next test's Accelerator starts from its own settings, not this one's cpu=True
        AcceleratorState._reset_state(reset_partial_state=True)
    assert one["examples"] == 21 and 0 < one["f1"] < 1 and one["accuracy"] < 1
    for index in (0, 1):
        two = json.loads((tmp_path / f"rank{index}.json").read_text())
        assert two["processes"] == 2
        assert two["scores"] == one
        assert two["predictions"] == predictions


def test_card_has_the_per_type_table_and_token_classification_model_index(runs):
    card = (runs["full"] / "README.md").read_text()
    assert "### Per-entity-type metrics (entity level) (test split)" in card
    assert "| PER |" in card and "pipeline_tag: token-classification" in card
    meta = yaml.safe_load(card.split("---\n", 2)[1])
    results = meta["model-index"][0]["results"]
    assert {r["task"]["type"] for r in results} == {"token-classification"}
    assert {m["type"] for r in results for m in r["metrics"]} >= {"f1", "precision", "recall", "accuracy"}
    assert 'aggregation_strategy="first"' in card


PUBLISHED = """
import json, sys
import transformers
from transformers import pipeline
from hf_transfer.hub import publish

transformers.logging.set_verbosity_error()
publish(sys.argv[1], "me/ner")
found = {}
for aggregation in ("first", "simple"):
    tagger = pipeline("token-classification", model="me/ner", aggregation_strategy=aggregation)
    rows = tagger(json.loads(sys.argv[2]))
    found[aggregation] = [[[e["entity_group"], int(e["start"]), int(e["end"])] for e in row] for row in rows]
print(json.dumps(found))
"""


def test_published_repo_gives_the_same_spans_as_predict(local_hub, tmp_path, runs):
    from hf_transfer.inference import load_run, predict_inputs

    hub = run_client(PUBLISHED, hub_env(local_hub, tmp_path), str(runs["full"]), json.dumps(SENTENCES), cwd=tmp_path)
    local = [[list(span) for span in _spans(r["entities"])] for r in predict_inputs(load_run(runs["full"]), SENTENCES)]
    assert hub["first"] == local and local[0] == [["PER", 0, 10], ["LOC", 19, 24]]
    # A trained model tags a word's later sub-words like its first: `simple` grouping gives the same spans.
    assert hub["simple"] == local
    assert "config.json" in local_hub.files("me/ner") and "README.md" in local_hub.files("me/ner")


def test_space_renders_highlighted_text_with_real_examples_and_serves_entities(runs):
    gradio_client = pytest.importorskip("gradio_client")
    from hf_transfer.space import launch_demo, render_space_files

    files = render_space_files("me/ner", runs["full"])
    assert {n for n in files if n.startswith("io_")} == {"io_token_classification.py"}
    shipped = json.loads(files["examples.json"])
    run = json.loads((runs["full"] / "run.json").read_text())
    assert shipped == [e["text"] for e in run["examples"]][: len(shipped)]
    assert "gr.HighlightedText" in files["io_token_classification.py"].decode()
    demo = launch_demo(runs["full"], prevent_thread_lock=True)
    try:
        client = gradio_client.Client(demo.local_url, verbose=False)
        result = client.predict(SENTENCES[0], api_name="/predict")
    finally:
        demo.close()
    # HighlightedText sends the text as pieces, each with its entity type (None between entities).
    assert [(piece["token"], piece["class_or_confidence"]) for piece in result if piece["token"]] == [
        ("John Smith", "PER"),
        (" visited ", None),
        ("Paris", "LOC"),
        (" on Monday", None),
    ]


def test_compare_ranks_token_runs_by_entity_f1(tmp_path, tiny_bert, ner_folder):
    from hf_transfer.compare import compare

    recipe = ner_recipe(tmp_path / "r.yaml", tiny_bert, ner_folder, tmp_path / "o", training={"epochs": 2})
    results = compare(recipe, "head,full", output_dir=tmp_path / "cmp")
    assert [r["metric"] for r in results] == ["f1", "f1"]
    for r in results:
        saved = json.loads((Path(r["output_dir"]) / "metrics.json").read_text())["test"]
        assert r["score"] == saved["f1"]
    assert "| strategy | f1 | accuracy |" in (tmp_path / "cmp" / "results.md").read_text()


def test_advise_says_it_supports_sequence_classification_only(tmp_path, ner_folder, capsys):
    from hf_transfer.cli import main

    recipe = ner_recipe(tmp_path / "r.yaml", "m", ner_folder, tmp_path / "o")
    assert main(["advise", str(recipe)]) == 2
    error = capsys.readouterr().err
    assert "task 'token-classification'" in error and "single-label 'text-classification'" in error


# -- the real thing ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
@needs_conll
def test_packaged_minilm_on_a_conll_slice_end_to_end(tmp_path, monkeypatch):
    mirrors = tmp_path / "mirrors.yaml"
    mirrors.write_text(yaml.safe_dump({"eriktks/conll2003": str(CONLL)}), encoding="utf-8")
    monkeypatch.setenv("HF_TRANSFER_MIRRORS", str(mirrors))
    root = Path(__file__).resolve().parents[1]
    overrides = ["training.epochs=3", "training.max_train_samples=600", "training.max_eval_samples=200"]
    recipe = load_recipe(root / "recipes" / "conll2003-minilm-head.yaml", overrides, str(tmp_path / "out"))
    recipe.strategy.feature_cache = str(tmp_path / "features")
    out = train(recipe)
    metrics = json.loads((out / "metrics.json").read_text())
    # A frozen sentence encoder's token states with a linear head: well above zero after 3 epochs on 600 sentences.
    assert metrics["test"]["f1"] > 0.2 and metrics["test"]["entities"] > 250
    run = json.loads((out / "run.json").read_text())
    assert run["dataset"]["id"] == "eriktks/conll2003" and set(run["per_class"]) == {"LOC", "MISC", "ORG", "PER"}
    assert str(CONLL) not in (out / "README.md").read_text()
