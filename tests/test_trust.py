"""One trust rule for a folder's own model code, by content and never by claim: predict, evaluate, demo, publish and
the rendered Space refuse every hostile folder below (the code they plant never runs), trust hf_transfer's own
untouched folder without a flag, and honour an explicit --trust-remote-code."""

import ast
import hashlib
import json
import runpy
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import python_env, recipe_yaml
from hub_server import hub_env

from hf_transfer.errors import PublishError, SourceError
from hf_transfer.hub import publish
from hf_transfer.inference import evaluate_run, load_run
from hf_transfer.pooled import POOLED_MODEL_CLASS, POOLED_MODEL_FILE, pooled_model_source
from hf_transfer.recipe import load_recipe
from hf_transfer.run_folder import RunFolder
from hf_transfer.space import launch_demo, render_space_files
from hf_transfer.train import train
from hf_transfer.trust import OWN_CLASSES, allow_model_code, check_code

OWN_REFERENCE = f"modeling_hf_transfer.{POOLED_MODEL_CLASS}"


@pytest.fixture(scope="module")
def pooled_run(tmp_path_factory, tiny_bert, sentiment_folder) -> Path:
    """A folder hf_transfer wrote with its own architecture: a frozen mean-pooled head on the tiny BERT."""
    root = tmp_path_factory.mktemp("pooled")
    strategy = {"kind": "head", "pooling": "mean"}
    recipe = recipe_yaml(root / "r.yaml", tiny_bert, sentiment_folder, root / "out", strategy=strategy)
    return train(load_recipe(recipe))


@pytest.fixture
def folder(pooled_run, tmp_path) -> Path:
    """A fresh copy of the pooled run, to tamper with."""
    return Path(shutil.copytree(pooled_run, tmp_path / "run"))


@pytest.fixture
def marker(tmp_path) -> Path:
    """The file planted code writes when it runs: it must never appear unless the user trusted that code."""
    return tmp_path / "planted-code-ran"


def planted(marker: Path, body: str = "") -> str:
    return f"from pathlib import Path\n\nPath({str(marker)!r}).write_text('ran')\n{body}"


def _edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _auto_map(folder: Path, reference: str) -> None:
    _edit_json(folder / "config.json", auto_map={"AutoModelForSequenceClassification": reference})


# -- the hostile folders: each plants code and returns what the refusal must say --------------------------------------


def foreign_code_claiming_hf_transfer(folder: Path, marker: Path) -> str:
    """Its own Python file, with run.json swearing hf_transfer wrote the folder and trusts its code."""
    _auto_map(folder, "custom_model.MarkerForSequenceClassification")
    body = "from transformers import BertForSequenceClassification\n\n\n"
    body += "class MarkerForSequenceClassification(BertForSequenceClassification):\n    pass\n"
    (folder / "custom_model.py").write_text(planted(marker, body))
    _edit_json(folder / "run.json", produced_by="hf_transfer", trust_remote_code=True)
    return "names custom_model.MarkerForSequenceClassification"


def tampered_own_file(folder: Path, marker: Path) -> str:
    """hf_transfer's own modeling file with a line added; run.json untouched."""
    modeling = folder / POOLED_MODEL_FILE
    modeling.write_text(planted(marker) + modeling.read_text())
    return "is not the file this hf_transfer writes for its config"


def another_repos_code(folder: Path, marker: Path) -> str:
    """`auto_map` sends transformers to download and run another repository's file."""
    _auto_map(folder, f"other/repo--{OWN_REFERENCE}")
    return "points at another repository's code"


def another_name_in_the_own_file(folder: Path, marker: Path) -> str:
    """The untouched own file, but `auto_map` names something else in it (transformers' AutoModel, imported there)."""
    _auto_map(folder, "modeling_hf_transfer.AutoModel")
    return "names modeling_hf_transfer.AutoModel"


def tokenizer_code(folder: Path, marker: Path) -> str:
    """The model is hf_transfer's own; the tokenizer config asks for code of its own."""
    _edit_json(folder / "tokenizer_config.json", auto_map={"AutoTokenizer": [None, "custom_tok.MarkerTokenizer"]})
    body = "from transformers import BertTokenizerFast\n\n\nclass MarkerTokenizer(BertTokenizerFast):\n    pass\n"
    (folder / "custom_tok.py").write_text(planted(marker, body))
    return "tokenizer_config.json names custom_tok.MarkerTokenizer"


def own_file_outside_the_folder(folder: Path, marker: Path) -> str:
    """The right bytes, but through a symlink out of the folder: nothing outside the folder is read."""
    outside = folder.parent / "elsewhere.py"
    shutil.move(folder / POOLED_MODEL_FILE, outside)
    (folder / POOLED_MODEL_FILE).symlink_to(outside)
    return f"{POOLED_MODEL_FILE} is missing from the folder"


HOSTILE: dict[str, Callable[[Path, Path], str]] = {
    "foreign-code-claiming-hf_transfer": foreign_code_claiming_hf_transfer,
    "tampered-own-file": tampered_own_file,
    "another-repos-code": another_repos_code,
    "another-name-in-the-own-file": another_name_in_the_own_file,
    "tokenizer-code": tokenizer_code,
    "own-file-outside-the-folder": own_file_outside_the_folder,
}


@pytest.mark.parametrize("make_hostile", HOSTILE.values(), ids=HOSTILE.keys())
def test_every_command_refuses_a_hostile_folder_and_its_code_never_runs(folder, marker, make_hostile):
    reason = make_hostile(folder, marker)

    assert reason in check_code(RunFolder(folder)).problem
    for command in (load_run, evaluate_run, launch_demo):
        with pytest.raises(SourceError, match="not hf_transfer's own architecture") as refused:
            command(folder)
        assert reason in str(refused.value) and "--trust-remote-code" in str(refused.value)
    with pytest.raises(PublishError, match="Refusing to create the Space me/x-demo: .*--trust-remote-code"):
        publish(folder, "me/x", space="me/x-demo")
    app = render_space_files("me/x", folder)["app.py"].decode()
    assert 'TRUSTED_REPO = ""' in app and 'TRUSTED_CODE_SHA256 = ""' in app
    assert not marker.exists()


def test_the_untouched_own_folder_is_trusted_by_its_bytes_with_or_without_its_records(folder):
    own = RunFolder(folder)
    digest = hashlib.sha256((folder / POOLED_MODEL_FILE).read_bytes()).hexdigest()
    assert check_code(own).own_sha256 == digest and allow_model_code(own) is True
    assert type(load_run(folder).model).__name__ == POOLED_MODEL_CLASS
    app = render_space_files("me/x", folder)["app.py"].decode()
    assert 'TRUSTED_REPO = "me/x"' in app and f'TRUSTED_CODE_SHA256 = "{digest}"' in app

    # Folders written before run.json recorded provenance, or without run.json at all, keep working: the claims
    # never counted, the bytes do.
    run = json.loads((folder / "run.json").read_text())
    (folder / "run.json").write_text(json.dumps({k: v for k, v in run.items() if k not in ("produced_by", "adapter")}))
    assert type(load_run(folder).model).__name__ == POOLED_MODEL_CLASS
    (folder / "run.json").unlink()
    assert allow_model_code(RunFolder(folder)) is True


def test_the_app_checks_the_same_classes_the_package_trusts(pooled_run):
    from transformers import AutoConfig

    source = pooled_model_source(AutoConfig.from_pretrained(pooled_run))
    assert {node.name for node in ast.parse(source).body if isinstance(node, ast.ClassDef)} == set(OWN_CLASSES)


def test_the_explicit_flag_runs_the_code_the_user_trusts(folder, marker):
    foreign_code_claiming_hf_transfer(folder, marker)
    assert type(load_run(folder, trust_remote_code=True).model).__name__ == "MarkerForSequenceClassification"
    assert marker.exists()


def _cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hf_transfer", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600
    )


def test_predict_refuses_in_one_line_and_runs_with_the_flag(folder, marker, tmp_path):
    foreign_code_claiming_hf_transfer(folder, marker)
    env = python_env()

    refused = _cli(["predict", str(folder), "a fine film"], env, tmp_path)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert refused.stderr.strip().count("\n") == 0 and refused.stderr.startswith(f"error: {folder} needs model code")
    assert not marker.exists()

    trusted = _cli(["predict", str(folder), "a fine film", "--trust-remote-code", "--json"], env, tmp_path)
    assert trusted.returncode == 0, trusted.stderr[-3000:]
    assert marker.exists() and set(json.loads(trusted.stdout)[0]["scores"]) == {"neg", "pos"}


def test_another_repos_code_is_not_even_downloaded_without_the_flag(folder, marker, tmp_path, local_hub):
    body = "from transformers import BertForSequenceClassification\n\n\n"
    body += "class Classifier(BertForSequenceClassification):\n    pass\n"
    local_hub.seed("other/repo", {"evil.py": planted(marker, body).encode()})
    _auto_map(folder, "other/repo--evil.Classifier")
    env = hub_env(local_hub, tmp_path)

    refused = _cli(["predict", str(folder), "a fine film"], env, tmp_path)
    assert refused.returncode == 2 and "points at another repository's code" in refused.stderr
    assert not marker.exists()
    assert not [e["path"] for e in local_hub.request_log if "other/repo" in e["path"]]

    trusted = _cli(["predict", str(folder), "a fine film", "--trust-remote-code"], env, tmp_path)
    assert trusted.returncode == 0, trusted.stderr[-3000:]
    assert marker.exists() and [e["path"] for e in local_hub.request_log if "other/repo" in e["path"]]


# -- the rendered Space: trust travels as the modeling file's sha256, checked on what the app downloads ---------------

APP_ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "TOKENIZERS_PARALLELISM": "false"}
SERVED_CLASS = "import json, runpy; print(json.dumps(type(runpy.run_path('app.py')['CLASSIFIER'].model).__name__))"


def _render(tmp_path: Path, repo_id: str, folder: Path, **options) -> Path:
    app_dir = tmp_path / f"space-{len(list(tmp_path.glob('space-*')))}"
    for name, content in render_space_files(repo_id, folder, **options).items():
        (app_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (app_dir / name).write_bytes(content)
    return app_dir


def _serve_in_process(app_dir: Path, model_id: str, monkeypatch) -> str:
    monkeypatch.setenv("MODEL_ID", model_id)
    return type(runpy.run_path(str(app_dir / "app.py"))["CLASSIFIER"].model).__name__


APP_HOSTILE = {name: make for name, make in HOSTILE.items() if make is not own_file_outside_the_folder}
"""The app trusts bytes: a symlink to the right bytes is no threat to it (the package refuses it as outside)."""


@pytest.mark.parametrize("make_hostile", APP_HOSTILE.values(), ids=APP_HOSTILE.keys())
def test_a_rendered_app_refuses_the_model_once_its_code_changes(folder, marker, tmp_path, monkeypatch, make_hostile):
    app_dir = _render(tmp_path, str(folder), folder)
    assert _serve_in_process(app_dir, str(folder), monkeypatch) == POOLED_MODEL_CLASS

    make_hostile(folder, marker)
    with pytest.raises(SystemExit, match=f"error: {folder.name} needs model code of its own") as refused:
        _serve_in_process(app_dir, str(folder), monkeypatch)
    assert "hf-transfer demo" in str(refused.value) and "\n" not in str(refused.value)
    assert not marker.exists()


def test_a_space_serves_the_hub_repo_while_its_code_is_the_vouched_file(folder, marker, tmp_path, local_hub):
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    local_hub.seed("me/pooled", files)
    app_dir = _render(tmp_path, "me/pooled", folder)
    env = {**hub_env(local_hub, tmp_path), **APP_ENV}
    env.pop("MODEL_ID", None)

    served = subprocess.run([sys.executable, "-c", SERVED_CLASS], env=env, cwd=app_dir, capture_output=True, text=True)
    assert served.returncode == 0, served.stderr[-3000:]
    assert json.loads(served.stdout.splitlines()[-1]) == POOLED_MODEL_CLASS

    # Someone pushes a changed modeling file to the model repo: the Space stops instead of running it.
    tampered = planted(marker).encode() + files[POOLED_MODEL_FILE]
    local_hub.seed("me/pooled", {**files, POOLED_MODEL_FILE: tampered})
    refused = subprocess.run(
        [sys.executable, "-c", SERVED_CLASS], env=env, cwd=app_dir, capture_output=True, text=True
    )
    assert refused.returncode == 1
    assert "error: me/pooled needs model code of its own" in refused.stderr
    assert "no longer the hf_transfer modeling file" in refused.stderr
    assert not marker.exists()


def test_publish_renders_a_space_for_foreign_code_only_with_the_flag(folder, marker):
    foreign_code_claiming_hf_transfer(folder, marker)
    with pytest.raises(PublishError, match="Refusing to create the Space"):
        publish(folder, "me/x", space="me/x-demo")
    app = render_space_files("me/x", folder, trust_remote_code=True)["app.py"].decode()
    # Trusted as the user said, with no digest to pin: the foreign code is not hf_transfer's file.
    assert 'TRUSTED_REPO = "me/x"' in app and 'TRUSTED_CODE_SHA256 = ""' in app
    assert not marker.exists()
