"""The bad-input catalogue: each way a recipe, data, model, output folder or push goes wrong, and its one message."""

import csv
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import recipe_yaml, sentiment_rows, write_csv, write_image_folder
from hub_server import LocalHub, hub_env, run_client

from hf_transfer.cli import main
from hf_transfer.ownership import RUN, write_marker
from hf_transfer.recipe import load_recipe
from hf_transfer.tasks import prepare_data


def tree_hashes(folder: Path) -> dict[str, str]:
    """Every file under `folder` by relative path and content hash: equal trees mean nothing was lost or changed."""
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def write_previous_run(folder: Path) -> None:
    """What a user's earlier run leaves behind: the files every bad input must leave in place."""
    folder.mkdir(parents=True)
    write_marker(folder, RUN)  # a run of this hf_transfer: --overwrite may clear it, but only once inputs loaded
    (folder / "model.safetensors").write_bytes(os.urandom(4096))
    (folder / "metrics.json").write_text('{"test": {"accuracy": 0.93}}\n', encoding="utf-8")
    (folder / "README.md").write_text("# my earlier model\n", encoding="utf-8")
    (folder / "train_log.jsonl").write_text('{"epoch": 0, "validation_accuracy": 0.9}\n', encoding="utf-8")


@dataclass
class Ctx:
    """One case's world: a tiny model, generated data, and an output folder holding the user's earlier run."""

    tmp: Path
    model: Path
    data: Path
    out: Path
    finished: Path
    capsys: Any
    caplog: Any
    request: Any
    before: dict[str, str]

    def recipe(self, name: str = "recipe.yaml", source: Path | str | None = None, **sections: Any) -> Path:
        return recipe_yaml(self.tmp / name, self.model, source or self.data, self.out, **sections)

    def raw_recipe(self, text: str, name: str = "raw.yaml") -> Path:
        path = self.tmp / name
        path.write_text(text, encoding="utf-8")
        return path

    def folder(self, name: str, **splits: list[tuple] | bytes) -> Path:
        """A data folder of split files: rows become CSV, bytes are written as they are."""
        folder = self.tmp / name
        folder.mkdir()
        for split, rows in splits.items():
            target = folder / f"{split}.csv"
            if isinstance(rows, bytes):
                target.write_bytes(rows)
            else:
                write_csv(target, rows)
        return folder

    def sentiment(self, name: str, **changes: list[tuple] | bytes) -> Path:
        """The generated sentiment splits with some replaced."""
        splits: dict[str, list[tuple] | bytes] = {
            "train": sentiment_rows(32, 1),
            "validation": sentiment_rows(8, 2),
            "test": sentiment_rows(8, 3),
        }
        splits.update(changes)
        return self.folder(name, **{k: v for k, v in splits.items() if v is not None})

    def adopt(self, source: Path) -> None:
        """Make `source` (a real finished run) the user's earlier run in `out`."""
        shutil.rmtree(self.out)
        shutil.copytree(source, self.out)
        self.before = tree_hashes(self.out)

    def train_error(self, recipe: Path | str, *args: str, flags: tuple[str, ...] = ("--overwrite",)) -> str:
        """Run `hf-transfer train` in-process; it must fail with exit code 2 and one `error:` message, returned."""
        self.capsys.readouterr()
        code = main(["train", str(recipe), *args, *flags])
        err = self.capsys.readouterr().err
        assert code == 2, err[-3000:]
        assert err.count("error: ") == 1 and "Traceback" not in err, err[-3000:]
        return err[err.index("error: ") :].strip()


CASES: list[Any] = []


def case(case_id: str, expected: str) -> Callable[[Callable[[Ctx], str]], Callable[[Ctx], str]]:
    """Register a case: it returns the message the user sees, which must match `expected`."""

    def register(function: Callable[[Ctx], str]) -> Callable[[Ctx], str]:
        CASES.append(pytest.param(function, expected, id=case_id))
        return function

    return register


# -- the recipe -------------------------------------------------------------------------------------------------------


@case("recipe-typo-top-level-key", r"unknown key 'modle'; check its spelling")
def _(ctx: Ctx) -> str:
    return ctx.train_error(ctx.raw_recipe(f"modle: {ctx.model}\ndata: {{source: {ctx.data}}}\n"))


@case("recipe-typo-nested-key", r"unknown key 'training.learning_rate'")
def _(ctx: Ctx) -> str:
    return ctx.train_error(ctx.recipe(training={"learning_rate": 1e-3}))


@case("override-typo", r"\(with overrides training.epocs=3\): unknown key 'training.epocs'")
def _(ctx: Ctx) -> str:
    return ctx.train_error(ctx.recipe(), "training.epocs=3")


@case("override-without-equals-sign", r"override 'training.lr' is not of the form key.path=value")
def _(ctx: Ctx) -> str:
    return ctx.train_error(ctx.recipe(), "training.lr")


@case("wrong-type-number", r"training.epochs = 'three' is invalid: Input should be a valid integer")
def _(ctx: Ctx) -> str:
    return ctx.train_error(ctx.recipe(training={"epochs": "three"}))


@case("wrong-type-out-of-range", r"data.max_length = -1 is invalid: Input should be greater than 0")
def _(ctx: Ctx) -> str:
    return ctx.train_error(ctx.recipe(data={"max_length": -1}))


@case("wrong-type-section", r"training = 3 is invalid: Input should be a valid dictionary")
def _(ctx: Ctx) -> str:
    return ctx.train_error(ctx.recipe(training=3))


@case(
    "unknown-strategy",
    r"strategy.kind = 'adapters' is invalid.*allowed: 'head', 'partial', 'lora', 'full' or 'contrastive'",
)
def _(ctx: Ctx) -> str:
    return ctx.train_error(ctx.recipe(strategy={"kind": "adapters"}))


@case("unknown-task", r"task = 'ner' is invalid.*allowed: 'text-classification'")
def _(ctx: Ctx) -> str:
    return ctx.train_error(ctx.recipe(task="ner"))


@case("missing-required-key", r"missing required key 'model'")
def _(ctx: Ctx) -> str:
    return ctx.train_error(ctx.raw_recipe(f"data: {{source: {ctx.data}}}\n"))


@case("layers-for-a-strategy-without-layers", r"strategy = .*'layers' applies to kind 'partial' only, not 'lora'")
def _(ctx: Ctx) -> str:
    return ctx.train_error(ctx.recipe(strategy={"kind": "lora", "layers": 2}))


@case("unknown-split-in-data-files", r"data.files = .* unknown split 'dev'; allowed: train, validation, test")
def _(ctx: Ctx) -> str:
    files = {"train": str(ctx.data / "train.csv"), "dev": str(ctx.data / "validation.csv")}
    return ctx.train_error(ctx.recipe(data={"files": files}))


@case("metric-for-best-not-computed", r"training.metric_for_best = 'bleu' is not computed; choose from \[.*'accuracy'")
def _(ctx: Ctx) -> str:
    return ctx.train_error(ctx.recipe(training={"metric_for_best": "bleu"}))


@case("recipe-not-yaml", r"bad.yaml: not valid YAML")
def _(ctx: Ctx) -> str:
    return ctx.train_error(ctx.raw_recipe("model: [unclosed\n", "bad.yaml"))


@case("recipe-not-a-mapping", r"list.yaml: a recipe is a mapping of keys")
def _(ctx: Ctx) -> str:
    return ctx.train_error(ctx.raw_recipe("- model\n- data\n", "list.yaml"))


@case("recipe-not-utf8", r"latin1.yaml: not UTF-8 text")
def _(ctx: Ctx) -> str:
    path = ctx.tmp / "latin1.yaml"
    path.write_bytes(f"model: {ctx.model}\n# caf\xe9\n".encode("latin-1"))
    return ctx.train_error(path)


@case("recipe-file-missing", r"recipe file '.*nope.yaml' does not exist")
def _(ctx: Ctx) -> str:
    return ctx.train_error(ctx.tmp / "nope.yaml")


# -- the data ---------------------------------------------------------------------------------------------------------


@case("no-train-split", r"has no 'train' split \(found: \['test', 'validation'\]\)")
def _(ctx: Ctx) -> str:
    return ctx.train_error(ctx.recipe(source=ctx.sentiment("no-train", train=None)))


@case("zero-byte-split-file", r"validation.csv: the file is empty")
def _(ctx: Ctx) -> str:
    return ctx.train_error(ctx.recipe(source=ctx.sentiment("zero-byte", validation=b"")))


@case("split-with-a-header-only", r"split 'validation' of '.*header-only' is empty")
def _(ctx: Ctx) -> str:
    return ctx.train_error(ctx.recipe(source=ctx.sentiment("header-only", validation=b"text,label\n")))


@case("missing-text-column", r"split '\w+' of .* has no column 'sentence' \(data.text_column\); its columns are")
def _(ctx: Ctx) -> str:
    return ctx.train_error(ctx.recipe(data={"text_column": "sentence"}))


@case("missing-label-column", r"split '\w+' of .* has no column 'sentiment' \(data.label_column\)")
def _(ctx: Ctx) -> str:
    return ctx.train_error(ctx.recipe(data={"label_column": "sentiment"}))


@case("eval-label-not-seen-in-train", r"split 'validation', row 3: label 'meh' does not occur in train")
def _(ctx: Ctx) -> str:
    rows = sentiment_rows(8, 2)
    rows[3] = ("a film that was meh", "meh")
    return ctx.train_error(ctx.recipe(source=ctx.sentiment("unseen-label", validation=rows)))


@case("single-class", r"train split has a single class \(\['pos'\]\); classification needs at least two")
def _(ctx: Ctx) -> str:
    rows = [(text, "pos") for text, _ in sentiment_rows(32, 1)]
    return ctx.train_error(ctx.recipe(source=ctx.sentiment("one-class", train=rows)))


@case("empty-text-rows-are-skipped-and-counted", r"skipped 2 rows with empty text in split 'train'")
def _(ctx: Ctx) -> str:
    rows = sentiment_rows(32, 1)
    rows[5], rows[9] = ("", "pos"), ("   ", "neg")
    recipe = load_recipe(ctx.recipe(source=ctx.sentiment("empty-text", train=rows)))
    with ctx.caplog.at_level(logging.WARNING, logger="hf_transfer.data"):
        data = prepare_data(recipe)
    # A documented skip, not an error: counted in the data record that run.json carries.
    assert data.labels.skipped == {"train_empty_text": 2}
    assert len(data.splits["train"]) == 30
    return ctx.caplog.text


@case("split-with-only-empty-text", r"split 'validation' of .* has no usable rows")
def _(ctx: Ctx) -> str:
    rows = [("", "pos"), ("  ", "neg")]
    return ctx.train_error(ctx.recipe(source=ctx.sentiment("all-empty", validation=rows)))


@case("non-utf8-text", r"train.csv: line 5 is not UTF-8 text \(byte \d+\); re-save the file as UTF-8")
def _(ctx: Ctx) -> str:
    lines = [f"{text},{label}" for text, label in sentiment_rows(32, 1)]
    lines[3] = "a caf\xe9 film,pos"
    raw = ("text,label\n" + "\n".join(lines) + "\n").encode("latin-1")
    return ctx.train_error(ctx.recipe(source=ctx.sentiment("latin1", train=raw)))


@case("ragged-csv-row", r"train.csv: line 4 has 3 fields, the header has 2")
def _(ctx: Ctx) -> str:
    rows: list[tuple] = list(sentiment_rows(32, 1))
    rows[2] = ("a film", "pos", "extra")
    return ctx.train_error(ctx.recipe(source=ctx.sentiment("ragged", train=rows)))


def _regression_rows(n: int) -> list[tuple]:
    return [(f"{'great ' * (i % 4)}film number {i}", f"{i % 4 / 3:.3f}") for i in range(n)]


@case("nan-regression-target", r"split 'train', row 4: regression target is 'nan'; remove or fix the row")
def _(ctx: Ctx) -> str:
    rows = _regression_rows(24)
    rows[4] = ("a film", "nan")
    source = ctx.folder("nan-target", train=rows, validation=_regression_rows(8))
    return ctx.train_error(ctx.recipe(source=source, task="text-regression"))


@case("non-numeric-regression-target", r"split 'train', row 2: label 'high' is not a number \(data.label_column\)")
def _(ctx: Ctx) -> str:
    rows = _regression_rows(24)
    rows[2] = ("a film", "high")
    source = ctx.folder("word-target", train=rows, validation=_regression_rows(8))
    return ctx.train_error(ctx.recipe(source=source, task="text-regression"))


@case("unsupported-file-type", r"train.xlsx: unsupported file type '.xlsx'")
def _(ctx: Ctx) -> str:
    (ctx.tmp / "train.xlsx").write_bytes(b"PK\x03\x04")
    return ctx.train_error(ctx.recipe(data={"files": {"train": str(ctx.tmp / "train.xlsx")}}))


@case("data-file-missing", r"data file not found: .*missing.csv")
def _(ctx: Ctx) -> str:
    return ctx.train_error(ctx.recipe(data={"files": {"train": str(ctx.tmp / "missing.csv")}}))


@case("dataset-id-unknown-offline", r"cannot load dataset 'nobody/no-such-dataset'.*HF_TRANSFER_MIRRORS")
def _(ctx: Ctx) -> str:
    return ctx.train_error(ctx.recipe(source="nobody/no-such-dataset"))


@case("loader-function-missing", r"data.source 'no_such_module_xyz:load': cannot import module 'no_such_module_xyz'")
def _(ctx: Ctx) -> str:
    return ctx.train_error(ctx.recipe(source="no_such_module_xyz:load"))


# -- the model and the strategy ---------------------------------------------------------------------------------------


@case("max-length-beyond-the-model", r"data.max_length = 512 exceeds the model's max_position_embeddings \(128\)")
def _(ctx: Ctx) -> str:
    return ctx.train_error(ctx.recipe(data={"max_length": 512}))


@case(
    "lora-targets-match-nothing",
    r"strategy.target_modules \['q_proj'\] match no linear or convolution layer of .*'query'",
)
def _(ctx: Ctx) -> str:
    return ctx.train_error(ctx.recipe(strategy={"kind": "lora", "target_modules": ["query", "q_proj"]}))


@case("partial-layers-beyond-the-model", r"strategy.layers = 5 but '.*' has only 2 layers")
def _(ctx: Ctx) -> str:
    return ctx.train_error(ctx.recipe(strategy={"kind": "partial", "layers": 5}))


@case("model-id-unknown-offline", r"cannot load model 'nobody/no-such-model'. Tried:.*Fix: check the ID")
def _(ctx: Ctx) -> str:
    return ctx.train_error(ctx.recipe(), "model=nobody/no-such-model")


@case("model-id-unknown-on-the-hub", r"cannot load model 'nobody/no-such-model'.*the Hub: repository '\S+' does not")
def _(ctx: Ctx) -> str:
    return ctx.request.getfixturevalue("hub_client")["model"]


@case("pickle-only-model", r"model '.*pickled' has only pickle weights \(pytorch_model.bin\).*allow_pickle: true")
def _(ctx: Ctx) -> str:
    import torch
    from safetensors.torch import load_file

    pickled = ctx.tmp / "pickled"
    shutil.copytree(ctx.model, pickled)
    torch.save(load_file(str(pickled / "model.safetensors")), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    return ctx.train_error(ctx.recipe(), f"model={pickled}")


# -- the output folder ------------------------------------------------------------------------------------------------


@case("existing-output-folder", r"training.output_dir '.*out' already holds files; pass --overwrite to replace them")
def _(ctx: Ctx) -> str:
    return ctx.train_error(ctx.recipe(), flags=())


@case("output-folder-is-a-file", r"training.output_dir '.*a-file' is a file, not a folder")
def _(ctx: Ctx) -> str:
    (ctx.tmp / "a-file").write_text("mine\n", encoding="utf-8")
    message = ctx.train_error(ctx.recipe(), "--output-dir", str(ctx.tmp / "a-file"))
    assert (ctx.tmp / "a-file").read_text(encoding="utf-8") == "mine\n"
    return message


@case("unwritable-output-folder", r"training.output_dir '.*' is not writable: (Permission denied|Not a directory)")
def _(ctx: Ctx) -> str:
    if os.geteuid() != 0:
        locked = ctx.tmp / "locked"
        locked.mkdir(mode=0o500)
        target = locked / "out"
    else:  # root writes through permissions: a path through a regular file is unwritable for everyone
        (ctx.tmp / "plain-file").write_text("", encoding="utf-8")
        target = ctx.tmp / "plain-file" / "out"
    return ctx.train_error(ctx.recipe(), "--output-dir", str(target))


@case("resume-without-an-earlier-run", r"--resume: '.*fresh' holds no earlier run to resume")
def _(ctx: Ctx) -> str:
    return ctx.train_error(ctx.recipe(), "--output-dir", str(ctx.tmp / "fresh"), flags=("--resume",))


@case("resume-without-checkpoints", r"--resume: no checkpoint under .*checkpoints; start without --resume")
def _(ctx: Ctx) -> str:
    return ctx.train_error(ctx.recipe(), flags=("--resume",))


@case("resume-with-only-unreadable-checkpoints", r"--resume: every checkpoint under .*checkpoints is unreadable")
def _(ctx: Ctx) -> str:
    broken = ctx.out / "checkpoints" / "step-00000012"
    broken.mkdir(parents=True)
    (broken / "loop_state.json").write_text("{not json", encoding="utf-8")
    (broken / "model.safetensors").write_bytes(b"")
    ctx.before = tree_hashes(ctx.out)
    return ctx.train_error(ctx.recipe(), flags=("--resume",))


@case("resume-with-a-changed-recipe", r"--resume: checkpoint .*step-\d+ was written by a different recipe")
def _(ctx: Ctx) -> str:
    ctx.adopt(ctx.finished)
    recipe = ctx.finished / "recipe.yaml"
    return ctx.train_error(recipe, "training.lr=1e-4", "--output-dir", str(ctx.out), flags=("--resume",))


# -- publishing -------------------------------------------------------------------------------------------------------


@case("publish-a-folder-that-is-not-a-run", r"is not an hf_transfer output folder \(no config.json\)")
def _(ctx: Ctx) -> str:
    from hf_transfer.hub import PublishError, publish

    with pytest.raises(PublishError) as error:
        publish(ctx.tmp, "me/x")
    return str(error.value)


@case("publish-auth-failure", r"Publishing to me/denied failed. The Hub rejected the credentials \(401\).*auth login")
def _(ctx: Ctx) -> str:
    result = ctx.request.getfixturevalue("hub_client")
    assert "hf_wrong_token" not in result["auth"] and result["token"] not in result["auth"]
    return result["auth"]


@case("publish-network-failure-mid-push", r"Publishing to me/dropped failed: could not reach the Hub at http://127")
def _(ctx: Ctx) -> str:
    result = ctx.request.getfixturevalue("hub_client")
    assert result["dropped_repo_commits"] == 1  # the repo was created, the commit carrying the files never landed
    return result["network"]


# -- images ----------------------------------------------------------------------------------------------------------


def image_recipe(ctx: Ctx, folder: Path) -> Path:
    return ctx.recipe(source=folder, task="image-classification")


@case("corrupt-image-is-skipped-and-counted", r"skipped train row \d+ \(cut\.jpg\): OSError")
def _(ctx: Ctx) -> str:
    folder = write_image_folder(ctx.tmp / "photos", per_class=4, seed=0)
    good = next((folder / "train" / "red").glob("*.jpg")).read_bytes()
    (folder / "train" / "red" / "cut.jpg").write_bytes(good[: len(good) // 2])  # a download cut off halfway
    with ctx.caplog.at_level(logging.WARNING, logger="hf_transfer.images"):
        data = prepare_data(load_recipe(image_recipe(ctx, folder)))
    assert data.labels.skipped == {"images_unreadable": 1}
    assert len(data.splits["train"]) == 8
    return ctx.caplog.text


@case("zero-byte-image-is-skipped-and-counted", r"skipped validation row \d+ \(zero\.png\): UnidentifiedImageError")
def _(ctx: Ctx) -> str:
    folder = write_image_folder(ctx.tmp / "photos", per_class=4, seed=0)
    (folder / "val" / "blue" / "zero.png").write_bytes(b"")
    with ctx.caplog.at_level(logging.WARNING, logger="hf_transfer.images"):
        data = prepare_data(load_recipe(image_recipe(ctx, folder)))
    assert data.labels.skipped == {"images_unreadable": 1}
    return ctx.caplog.text


@case("split-with-no-readable-image", r"split 'validation' of .* has no readable images")
def _(ctx: Ctx) -> str:
    folder = write_image_folder(ctx.tmp / "photos", per_class=4, seed=0)
    for photo in (folder / "val").rglob("*.*"):
        photo.write_bytes(b"not an image")
    return ctx.train_error(image_recipe(ctx, folder))


@case("image-recipe-on-a-text-folder", r"no split folders \(train/, val/\), split tables \(train\.csv\) or class")
def _(ctx: Ctx) -> str:
    folder = ctx.tmp / "no-images"
    (folder / "notes").mkdir(parents=True)
    (folder / "notes" / "a.txt").write_text("text, not photos", encoding="utf-8")
    return ctx.train_error(image_recipe(ctx, folder))


# -- files that are not what they claim (issue 14, item 5) ------------------------------------------------------------


def cli_error(ctx: Ctx, *argv: str) -> str:
    """Run any `hf-transfer` command in-process; it must fail with exit code 2 and one `error:` line, returned."""
    ctx.capsys.readouterr()
    code = main(list(argv))
    err = ctx.capsys.readouterr().err
    assert code == 2, err[-3000:]
    assert err.count("error: ") == 1 and "Traceback" not in err, err[-3000:]
    return err[err.index("error: ") :].strip()


def jsonl(rows: list[tuple]) -> list[str]:
    return [json.dumps({"text": text, "label": label}) for text, label in rows]


@case("csv-field-beyond-the-csv-module-limit-is-read", r"read 48 rows, the longest 201414 characters")
def _(ctx: Ctx) -> str:
    # A long legitimate document is kept whole (the tokenizer truncates it); csv's global limit is left as it was.
    rows = sentiment_rows(32, 1)
    rows[7] = ("a superb film " + "and then some more " * 10_600, "pos")
    limit = csv.field_size_limit()
    data = prepare_data(load_recipe(ctx.recipe(source=ctx.sentiment("long-field", train=rows))))
    assert csv.field_size_limit() == limit
    texts = [text for split in data.splits.values() for text in split["text"]]
    assert rows[7][0] in texts
    return f"read {len(texts)} rows, the longest {max(map(len, texts))} characters"


@case("csv-field-with-a-line-separator-character-is-one-field", r"train row text 'great\\u2028film \\x85 \w+")
def _(ctx: Ctx) -> str:
    # U+2028 and NEL are characters inside a field, not line ends (str.splitlines() would cut the row there).
    rows = sentiment_rows(32, 1)
    rows[0] = ("great\u2028film \x85 " + rows[0][0], "pos")
    data = prepare_data(load_recipe(ctx.recipe(source=ctx.sentiment("line-separator", train=rows))))
    texts = list(data.splits["train"]["text"])
    assert len(texts) == 32
    return "train row text " + ascii(next(t for t in texts if "\u2028" in t))


@case(
    "jsonl-with-a-broken-line-in-data-files", r"train.jsonl: line 3 is not valid JSON \(Expecting value, column 34\)"
)
def _(ctx: Ctx) -> str:
    lines = jsonl(sentiment_rows(32, 1))
    lines[2] = '{"text": "a fine film", "label": }'
    (ctx.tmp / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return ctx.train_error(ctx.recipe(data={"files": {"train": str(ctx.tmp / "train.jsonl")}}))


@case("jsonl-with-a-truncated-last-line-in-a-source-folder", r"train.jsonl: line 32 is not valid JSON \(Unterminated")
def _(ctx: Ctx) -> str:
    folder = ctx.tmp / "cut-jsonl"
    folder.mkdir()
    text = "\n".join(jsonl(sentiment_rows(32, 1)))
    (folder / "train.jsonl").write_text(text[:-12], encoding="utf-8")  # a copy cut off mid-line
    return ctx.train_error(ctx.recipe(source=folder))


@case("pretty-printed-json-array-with-an-error", r"train.json: line 9 is not valid JSON \(Expecting ',' delimiter")
def _(ctx: Ctx) -> str:
    rows = [{"text": text, "label": label} for text, label in sentiment_rows(32, 1)]
    text = json.dumps(rows, indent=0).replace('"label": "neg"\n}', '"label": "neg"\n"oops"}', 1)
    (ctx.tmp / "train.json").write_text(text, encoding="utf-8")
    return ctx.train_error(ctx.recipe(data={"files": {"train": str(ctx.tmp / "train.json")}}))


@case("duplicate-column-in-a-csv-header", r"train.csv: the header names column 'text' twice; rename one of them")
def _(ctx: Ctx) -> str:
    rows = [(text, label, "a second text") for text, label in sentiment_rows(32, 1)]
    folder = ctx.tmp / "dup-header"
    folder.mkdir()
    write_csv(folder / "train.csv", rows, header=("text", "label", "text"))
    return ctx.train_error(ctx.recipe(source=folder))


@case("duplicate-column-in-a-tsv-header", r"dev.tsv: the header names column 'label' twice")
def _(ctx: Ctx) -> str:
    folder = ctx.sentiment("dup-tsv", validation=None)
    lines = ["text\tlabel\tlabel"] + [f"{text}\t{label}\t{label}" for text, label in sentiment_rows(8, 2)]
    (folder / "dev.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return ctx.train_error(ctx.recipe(source=folder))


@case("data-file-that-is-a-folder", r"x.csv: is a folder, not a file")
def _(ctx: Ctx) -> str:
    (ctx.tmp / "x.csv").mkdir()
    return ctx.train_error(ctx.recipe(data={"files": {"train": str(ctx.tmp / "x.csv")}}))


@case("data-source-an-empty-folder", r"empty: no split files \(train.csv, dev.tsv, ...\) and no class folders of .txt")
def _(ctx: Ctx) -> str:
    (ctx.tmp / "empty").mkdir()
    return ctx.train_error(ctx.recipe(source=ctx.tmp / "empty"))


@case("data-source-a-folder-of-unrelated-files", r"downloads: no split files \(train.csv, dev.tsv, ...\) and no class")
def _(ctx: Ctx) -> str:
    folder = ctx.tmp / "downloads"
    (folder / "notes").mkdir(parents=True)
    (folder / "notes.md").write_text("# notes\n", encoding="utf-8")
    (folder / "train.xlsx").write_bytes(b"PK\x03\x04")
    (folder / "notes" / "a.md").write_text("not a text file of the corpus\n", encoding="utf-8")
    return ctx.train_error(ctx.recipe(source=folder))


@case("image-data-source-an-empty-folder", r"empty: no split folders \(train/, val/\), split tables")
def _(ctx: Ctx) -> str:
    (ctx.tmp / "empty").mkdir()
    return ctx.train_error(image_recipe(ctx, ctx.tmp / "empty"))


@case("predict-file-not-utf8", r"latin1.txt: line 2 is not UTF-8 text \(byte 20\); re-save the file as UTF-8")
def _(ctx: Ctx) -> str:
    (ctx.tmp / "latin1.txt").write_bytes("a superb film\nun caf\xe9 charmant\n".encode("latin-1"))
    return cli_error(ctx, "predict", str(ctx.finished), "--file", str(ctx.tmp / "latin1.txt"))


@case("predict-file-that-is-a-folder", r"x.txt: is a folder, not a file")
def _(ctx: Ctx) -> str:
    (ctx.tmp / "x.txt").mkdir()
    return cli_error(ctx, "predict", str(ctx.finished), "--file", str(ctx.tmp / "x.txt"))


@case("predict-table-file-that-is-a-folder", r"x.csv: is a folder, not a file")
def _(ctx: Ctx) -> str:
    (ctx.tmp / "x.csv").mkdir()
    return cli_error(ctx, "predict", str(ctx.finished), "--file", str(ctx.tmp / "x.csv"))


def png_header(width: int, height: int) -> bytes:
    """A 65-byte PNG that claims `width`×`height` pixels: what a decompression bomb looks like on opening."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@case("predict-a-decompression-bomb", r"bomb.png: not an image that can be read \(DecompressionBombError: Image size")
def _(ctx: Ctx) -> str:
    (ctx.tmp / "bomb.png").write_bytes(png_header(50_000, 50_000))
    return cli_error(ctx, "predict", str(ctx.request.getfixturevalue("image_run")), str(ctx.tmp / "bomb.png"))


@case("predict-an-image-over-the-pixel-limit", r"wide.png: not an image that can be read \(DecompressionBombError")
def _(ctx: Ctx) -> str:
    from PIL import Image

    Image.new("RGB", (300, 200), "red").save(ctx.tmp / "wide.png")
    ctx.request.getfixturevalue("monkeypatch").setattr(Image, "MAX_IMAGE_PIXELS", 20_000)  # 60,000 > 2 × 20,000
    return cli_error(ctx, "predict", str(ctx.request.getfixturevalue("image_run")), str(ctx.tmp / "wide.png"))


@case("decompression-bomb-in-training-data-is-skipped-and-counted", r"skipped train row \d+ \(bomb\.png\): Decompr")
def _(ctx: Ctx) -> str:
    folder = write_image_folder(ctx.tmp / "photos", per_class=4, seed=0)
    (folder / "train" / "red" / "bomb.png").write_bytes(png_header(50_000, 50_000))
    with ctx.caplog.at_level(logging.WARNING, logger="hf_transfer.images"):
        data = prepare_data(load_recipe(image_recipe(ctx, folder)))
    assert data.labels.skipped == {"images_unreadable": 1}
    assert len(data.splits["train"]) == 8
    return ctx.caplog.text


def custom_code_model(ctx: Ctx, auto_map: dict[str, Any], model_type: str | None = None) -> Path:
    """The tiny model with its own code named in config.json; the code, if ever run, leaves a file behind."""
    folder = ctx.tmp / "custom-code"
    shutil.copytree(ctx.model, folder)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config["auto_map"] = auto_map
    config["model_type"] = model_type or config["model_type"]
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    (folder / "my_code.py").write_text(f"open({str(ctx.tmp / 'ran')!r}, 'w').close()\n", encoding="utf-8")
    return folder


@case(
    "custom-code-model-of-a-known-type",
    r"model '.*custom-code' needs its own code \(my_code.MyClassifier, from auto_map in .*config.json\).*"
    r"`trust_remote_code: true`",
)
def _(ctx: Ctx) -> str:
    # model_type is bert: transformers would quietly build its own BertForSequenceClassification instead.
    model = custom_code_model(ctx, {"AutoModelForSequenceClassification": "my_code.MyClassifier"})
    message = ctx.train_error(ctx.recipe(), f"model={model}")
    assert not (ctx.tmp / "ran").exists()
    return message


@case("custom-code-model-of-its-own-type", r"needs its own code \(my_code.MyConfig, my_code.MyModel, from auto_map")
def _(ctx: Ctx) -> str:
    model = custom_code_model(ctx, {"AutoConfig": "my_code.MyConfig", "AutoModel": "my_code.MyModel"}, "my_bert")
    message = ctx.train_error(ctx.recipe(), f"model={model}")
    assert not (ctx.tmp / "ran").exists()
    return message


@case("pickle-only-output-folder-is-refused-by-name", r"pickled-run has only pickle weights \(pytorch_model.bin\);")
def _(ctx: Ctx) -> str:
    from hf_transfer.errors import SourceError
    from hf_transfer.sources import check_saved_weights

    folder = pickled_copy(ctx.finished, ctx.tmp / "pickled-run")
    with pytest.raises(SourceError) as error:
        check_saved_weights(folder)
    assert "allow_pickle" in str(error.value)
    check_saved_weights(ctx.finished)  # safetensors: nothing to refuse
    return str(error.value)


def pickled_copy(folder: Path, target: Path) -> Path:
    """`folder` with its safetensors weights saved as a pickle (pytorch_model.bin) instead."""
    import torch
    from safetensors.torch import load_file

    shutil.copytree(folder, target, ignore=shutil.ignore_patterns("checkpoints"))
    torch.save(load_file(str(target / "model.safetensors")), target / "pytorch_model.bin")
    (target / "model.safetensors").unlink()
    return target


@pytest.mark.parametrize("command", [["predict", "{run}", "a superb film"], ["evaluate", "{run}"]])
def test_predict_and_evaluate_refuse_a_pickle_only_output_folder_in_one_line(
    tmp_path, finished_run, capsys, command
) -> None:
    folder = pickled_copy(finished_run, tmp_path / "pickled-run")
    code = main([part.format(run=folder) for part in command])
    err = capsys.readouterr().err
    assert code == 2 and err.count("error: ") == 1, err[-3000:]
    assert re.search(r"pickled-run has only pickle weights \(pytorch_model.bin\);.*allow_pickle", err), err


def test_the_project_s_own_architecture_is_not_custom_code(tmp_path) -> None:
    """A pooled output folder names modeling_hf_transfer in auto_map: the package's own code, used as `model:`."""
    from hf_transfer.recipe import recipe_from_dict
    from hf_transfer.sources import check_model_code

    (tmp_path / "config.json").write_text(
        json.dumps(
            {"model_type": "bert", "auto_map": {"AutoModelForSequenceClassification": "modeling_hf_transfer.X"}}
        ),
        encoding="utf-8",
    )
    recipe = recipe_from_dict({"model": str(tmp_path), "data": {"source": "x"}})
    check_model_code(tmp_path, recipe)  # no error


@pytest.fixture(scope="module")
def image_run(tmp_path_factory) -> Path:
    """An image output folder as training writes it (config, weights, processor, recipe), built without training."""
    import transformers

    folder = tmp_path_factory.mktemp("image-run")
    config = transformers.ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37
    )
    config.id2label, config.label2id = {0: "blue", 1: "red"}, {"blue": 0, "red": 1}
    transformers.ViTForImageClassification(config).save_pretrained(folder)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    recipe_yaml(folder / "recipe.yaml", folder, folder, folder, task="image-classification")
    return folder


# -- the catalogue's runner -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_bert, sentiment_folder) -> Path:
    """A real, finished run (one epoch, one checkpoint): for the resume and publish cases."""
    from hf_transfer.train import train

    tmp = tmp_path_factory.mktemp("finished")
    path = recipe_yaml(tmp / "r.yaml", tiny_bert, sentiment_folder, tmp / "run", training={"epochs": 1})
    return train(load_recipe(path, ["training.save_total_limit=1"]))


HUB_CLIENT = """
import json, sys
from hf_transfer.hub import PublishError, publish
from hf_transfer.sources import SourceError, resolve_model

folder, messages = sys.argv[1], {}
try:
    publish(folder, "me/dropped")
except PublishError as error:
    messages["network"] = str(error)
try:
    publish(folder, "me/denied", token="hf_wrong_token")
except PublishError as error:
    messages["auth"] = str(error)
try:
    resolve_model("nobody/no-such-model")
except SourceError as error:
    messages["model"] = str(error)
print(json.dumps(messages))
"""


@pytest.fixture(scope="module")
def hub_client(tmp_path_factory, finished_run) -> dict[str, Any]:
    """One client process against the local test Hub: a dropped connection mid-push, a wrong token, an unknown ID."""
    tmp = tmp_path_factory.mktemp("hub-client")
    hub = LocalHub().start()
    try:
        hub.fail_next("commit", "drop")
        before = tree_hashes(finished_run)
        result = run_client(HUB_CLIENT, hub_env(hub, tmp), str(finished_run), cwd=tmp)
        assert tree_hashes(finished_run) == before  # a failed push leaves the published folder as it was
        result["dropped_repo_commits"] = len(hub.commits("me/dropped"))
        result["token"] = hub.token
        assert ("model", "me/denied") not in hub.repos
    finally:
        hub.stop()
    return result


@pytest.fixture
def ctx(tmp_path, tiny_bert, sentiment_folder, finished_run, capsys, caplog, request) -> Iterator[Ctx]:
    out = tmp_path / "out"
    write_previous_run(out)
    sigterm = signal.getsignal(signal.SIGTERM)
    yield Ctx(tmp_path, tiny_bert, sentiment_folder, out, finished_run, capsys, caplog, request, tree_hashes(out))
    signal.signal(signal.SIGTERM, sigterm)  # `train` makes SIGTERM save a checkpoint; not for the rest of the run


@pytest.mark.parametrize(("run", "expected"), CASES)
def test_bad_input_gives_one_clear_message_and_keeps_existing_outputs(
    run: Callable[[Ctx], str], expected: str, ctx: Ctx
) -> None:
    message = run(ctx)
    assert re.search(expected, message, re.DOTALL), message
    assert tree_hashes(ctx.out) == ctx.before  # the user's earlier run is untouched, even under --overwrite
