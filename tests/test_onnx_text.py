"""The torch-free text path (`onnx_text.py`): `predict` on a text task's ONNX export with tokenizers, ONNX Runtime
and numpy alone — the export vouches for the tokenizer, the answers are the torch-importing path's, torch and
transformers are never imported, and any folder it cannot vouch for is served as before."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import LONG_TEXT, SENTIMENT_TEXTS, python_env, train_one_epoch, write_csv

pytest.importorskip("onnxruntime", reason="the onnx extra (onnxruntime) is not installed")
pytest.importorskip("onnxscript", reason="the onnx extra (onnxscript, for torch.onnx's exporter) is not installed")

from hf_transfer.cli import main  # noqa: E402
from hf_transfer.errors import ExportError, SourceError  # noqa: E402
from hf_transfer.inference import load_run  # noqa: E402
from hf_transfer.onnx_export import export  # noqa: E402
from hf_transfer.onnx_text import AWKWARD_TEXTS, load_onnx_text_run, tokenizer_record  # noqa: E402
from hf_transfer.streaming import predict_stream  # noqa: E402

TEXTS = [*SENTIMENT_TEXTS, LONG_TEXT]  # the last over data.max_length: truncated
MANY = TEXTS + list(AWKWARD_TEXTS) + [f"{word} film number {i}" for i, word in enumerate(["great", "dull"] * 20)]


def _exported(tmp: Path, tiny_bert: Path, data: Path, name: str, int8: bool = True, **sections) -> Path:
    folder = train_one_epoch(tmp, tiny_bert, data, name, **sections)
    export(folder, int8=int8)
    return folder


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_bert, sentiment_folder) -> Path:
    return _exported(tmp_path_factory.mktemp("onnx-text"), tiny_bert, sentiment_folder, "full")


def _assert_same_answers(lean: list[dict], expected: list[dict]) -> None:
    assert len(lean) == len(expected)
    for got, want in zip(lean, expected, strict=True):
        assert got["label"] == want["label"]
        if "scores" in want:
            assert got["scores"] == pytest.approx(want["scores"], abs=1e-6)
        else:
            assert got["score"] == pytest.approx(want["score"], abs=1e-6)


@pytest.mark.parametrize("runtime", ["onnx", "onnx-int8"])
def test_the_export_vouches_for_the_tokenizer_and_the_answers_are_the_torch_paths(exported, runtime):
    record = json.loads((exported / "onnx" / "manifest.json").read_text())["tokenizer"]
    assert record["matches_transformers"] is True
    assert set(record["files"]) == {"tokenizer.json", "tokenizer_config.json"}
    assert record["texts"] >= len(AWKWARD_TEXTS)

    lean = load_onnx_text_run(exported, runtime=runtime)
    assert lean is not None and lean.runtime == runtime
    _assert_same_answers(lean.predict(MANY), load_run(exported, runtime=runtime).predict(MANY))
    if runtime == "onnx-int8":
        assert lean.session.fallback is not None  # the guard serves this path too


def test_predict_imports_neither_torch_nor_transformers_and_prints_the_same_lines(exported, tmp_path):
    inputs = tmp_path / "inputs.txt"
    inputs.write_text("\n".join(MANY[:4] + MANY[6:]) + "\n", encoding="utf-8")  # blank lines are not inputs
    script = (
        "import sys\nfrom hf_transfer.cli import main\ncode = main(sys.argv[1:])\n"
        "heavy = [m for m in ('torch', 'transformers', 'datasets', 'accelerate') if m in sys.modules]\n"
        "print('imported:', heavy, file=sys.stderr)\nsys.exit(code)\n"
    )
    command = [sys.executable, "-c", script, "predict", str(exported), "--file", str(inputs)]
    result = subprocess.run(command, capture_output=True, text=True, env=python_env(), timeout=300)

    assert result.returncode == 0, result.stderr[-2000:]
    assert "imported: []" in result.stderr
    texts = [line for line in inputs.read_text(encoding="utf-8").splitlines() if line.strip()]
    run = load_run(exported)  # the default runtime, onnx-int8, through transformers
    # Batched as predict batches (by length): int8 scales each batch's activations together, so the batch matters.
    expected = [run.format_result(text, answer) for text, answer in predict_stream(run, texts, len(texts))]
    assert result.stdout.splitlines() == expected


@pytest.mark.parametrize("kind", ["pooled", "multi-label", "regression"])
def test_the_pooled_architecture_multi_label_and_regression_answer_alike(tmp_path, tiny_bert, sentiment_folder, kind):
    if kind == "pooled":
        folder = _exported(tmp_path, tiny_bert, sentiment_folder, kind, strategy={"kind": "full", "pooling": "mean"})
    elif kind == "multi-label":
        rows = [
            {"text": f"{'sport ' if i % 2 else ''}{'money ' if i % 3 else ''}news {i}", "label": []} for i in range(60)
        ]
        for i, row in enumerate(rows):
            row["label"] = (["sports"] if i % 2 else []) + (["business"] if i % 3 else [])
        (tmp_path / "ml").mkdir()
        (tmp_path / "ml" / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
        folder = _exported(tmp_path, tiny_bert, tmp_path / "ml", kind, task="multi-label-classification")
    else:
        (tmp_path / "reg").mkdir()
        write_csv(tmp_path / "reg" / "train.csv", [(f"{'great ' * (i % 4)}film", i % 4 / 3) for i in range(60)])
        folder = _exported(tmp_path, tiny_bert, tmp_path / "reg", kind, int8=False, task="text-regression")

    lean = load_onnx_text_run(folder)
    assert lean is not None
    torch_path = load_run(folder, runtime=lean.runtime)
    _assert_same_answers(lean.predict(MANY), torch_path.predict(MANY))
    if kind == "multi-label":
        assert isinstance(lean.predict(["sport money news"])[0]["label"], list)


def test_a_tokenizer_changed_since_the_export_is_served_through_transformers(tmp_path, exported, capsys):
    folder = tmp_path / "changed"
    shutil.copytree(exported, folder)
    tokenizer = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer, indent=1), encoding="utf-8")  # other bytes

    assert load_onnx_text_run(folder) is None
    capsys.readouterr()
    assert main(["predict", str(folder), *TEXTS]) == 0
    run = load_run(folder)
    assert run.runtime == "onnx-int8"
    expected = [run.format_result(t, a) for t, a in zip(TEXTS, run.predict(TEXTS), strict=True)]
    assert capsys.readouterr().out.splitlines() == expected


def test_a_tokenizer_json_that_tokenizes_otherwise_is_not_vouched_for(tmp_path, exported):
    folder = tmp_path / "otherwise"
    shutil.copytree(exported, folder)
    tokenizer = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    assert tokenizer["normalizer"]["lowercase"] is True
    tokenizer["normalizer"]["lowercase"] = False  # "Café" would no longer be "cafe"
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer), encoding="utf-8")
    transformers_tokenizer = load_run(exported, runtime="torch").preprocessor

    record = tokenizer_record(folder, transformers_tokenizer, 32, TEXTS, ["input_ids", "attention_mask"])
    assert record["matches_transformers"] is False
    assert record["reason"].startswith("input_ids differs from transformers' on")

    unknown = tokenizer_record(exported, transformers_tokenizer, 32, TEXTS, ["input_ids", "position_ids"])
    assert unknown["matches_transformers"] is False and unknown["reason"] == "the graph takes ['position_ids']"


def test_refusals_are_those_of_the_torch_path(tmp_path, exported):
    foreign = tmp_path / "foreign"
    shutil.copytree(exported, foreign)
    config = json.loads((foreign / "config.json").read_text())
    config["auto_map"] = {"AutoModelForSequenceClassification": "someone/else--modeling.Model"}
    (foreign / "config.json").write_text(json.dumps(config))
    with pytest.raises(SourceError, match="needs model code of its own"):
        load_onnx_text_run(foreign)

    altered = tmp_path / "altered"
    shutil.copytree(exported, altered)
    with open(altered / "onnx" / "model.int8.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ExportError, match=r"model.int8.onnx \(onnx-int8\) is not the file the export wrote"):
        load_onnx_text_run(altered)

    assert load_onnx_text_run(exported, runtime="torch") is None
    with pytest.raises(ExportError, match="runtime 'onnx-fast' is unknown"):
        load_onnx_text_run(exported, runtime="onnx-fast")
