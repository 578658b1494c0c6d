"""A recipe's `hub:` section publishes at the end of `hf-transfer train`, end to end against the local test Hub."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ACCELERATE_CPU_LAUNCH, recipe_yaml
from hub_server import LocalHub, hub_env, run_client

from hf_transfer.inference import load_run, predict_texts

REPO, SPACE = "me/x", "me/x-demo"
TEXTS = ["a wonderful, charming film", "the plot was dull and messy", "the cast was really quite excellent"]
PUBLISHED = {
    ".gitattributes",
    "README.md",
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "confusion_matrix.png",
    "recipe.yaml",
    "metrics.json",
    "run.json",
}

HUB_PIPELINE = """
import json, sys
import transformers
from transformers import pipeline

transformers.logging.set_verbosity_error()
classifier = pipeline("text-classification", model=sys.argv[1], top_k=None)
print(json.dumps(classifier(json.loads(sys.argv[2]))))
"""


def _cli(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """Run `python -m hf_transfer ARGS` in a new interpreter: it must succeed and keep the token out of its output."""
    proc = subprocess.run(
        [sys.executable, "-m", "hf_transfer", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    assert env["HF_TOKEN"] not in proc.stdout + proc.stderr, f"the token leaked into the output of {args}"
    return proc


def _files_holding(folder: Path, needle: str) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


def _pushed(hub: LocalHub, folder: Path) -> dict[str, bytes]:
    """The repo's head files copied verbatim from the folder (the card and the recipe are rendered for the Hub)."""
    rendered = {"README.md", "recipe.yaml"}
    return {name: data for name, data in hub.files(REPO).items() if (folder / name).is_file() and name not in rendered}


@pytest.fixture
def trained(local_hub, tmp_path, tiny_bert, sentiment_folder) -> tuple[Path, Path, dict[str, str]]:
    """A recipe with a hub section, trained once with `python -m hf_transfer train`: (recipe, output folder, env)."""
    out = tmp_path / "out"
    recipe = recipe_yaml(
        tmp_path / "recipe.yaml", tiny_bert, sentiment_folder, out, hub={"repo_id": REPO, "space": SPACE}
    )
    env = hub_env(local_hub, tmp_path)
    proc = _cli(env, tmp_path, "train", str(recipe))
    assert f"published {local_hub.url}/{REPO}" in proc.stdout
    return recipe, out, env


def test_training_publishes_the_model_its_space_and_predicts_like_the_folder(local_hub, trained, tmp_path):
    _, out, env = trained

    commits = local_hub.commits(REPO)
    assert len(commits) == 2  # the Hub's creation commit + exactly one publish
    assert set(commits[-1].files) == PUBLISHED
    pushed = _pushed(local_hub, out)
    assert pushed == {name: (out / name).read_bytes() for name in pushed}
    assert b"library_name: transformers" in commits[-1].files["README.md"]
    assert str(out).encode() not in commits[-1].files["recipe.yaml"]
    space = local_hub.repo(SPACE, "space")
    assert space.sdk == "gradio"
    assert space.variables["MODEL_ID"]["value"] == REPO
    assert {"app.py", "requirements.txt", "README.md"} <= set(space.head.files)
    assert b'DEFAULT_MODEL_ID = "me/x"' in space.head.files["app.py"]
    assert not _files_holding(out, local_hub.token)

    # The issue's bar: the Hub repo through a plain pipeline gives `hf-transfer predict`'s labels and probabilities.
    hub = run_client(HUB_PIPELINE, env, REPO, json.dumps(TEXTS), cwd=tmp_path)
    local = predict_texts(load_run(out), TEXTS)
    assert [row[0]["label"] for row in hub] == [entry["label"] for entry in local]
    for row, entry in zip(hub, local, strict=True):
        assert {p["label"]: p["score"] for p in row} == pytest.approx(entry["scores"], abs=1e-5)
    assert {p["label"] for row in hub for p in row} == {"neg", "pos"}


def test_retraining_updates_the_repo_and_an_unchanged_republish_commits_nothing(local_hub, trained, tmp_path):
    recipe, out, env = trained
    first = local_hub.commits(REPO)[-1]

    retrain = _cli(env, tmp_path, "train", str(recipe), "--overwrite")
    assert f"published {local_hub.url}/{REPO}" in retrain.stdout

    # A rerun records its own wall time in metrics.json (and the card), so the existing repo gets a second commit.
    commits = local_hub.commits(REPO)
    assert len(commits) == 3
    assert commits[-1].files["metrics.json"] != first.files["metrics.json"]
    pushed = _pushed(local_hub, out)
    assert pushed == {name: (out / name).read_bytes() for name in pushed}
    space_commits = len(local_hub.commits(SPACE, "space"))

    again = _cli(env, tmp_path, "publish", str(out), "--repo-id", REPO, "--space", SPACE, "--exist-ok")
    assert "already up to date" in again.stdout
    assert len(local_hub.commits(REPO)) == 3
    assert len(local_hub.commits(SPACE, "space")) == space_commits
    assert not _files_holding(out, local_hub.token)
    for repo in local_hub.repos.values():
        assert not [path for c in repo.history for path, data in c.files.items() if local_hub.token.encode() in data]


@pytest.mark.slow
def test_two_process_run_publishes_exactly_once(local_hub, tmp_path, tiny_bert, sentiment_folder):
    """Under real 2-process DDP only the main process pushes: one publish commit, one Space commit."""
    out = tmp_path / "out"
    recipe = recipe_yaml(
        tmp_path / "recipe.yaml", tiny_bert, sentiment_folder, out, hub={"repo_id": REPO, "space": SPACE}
    )
    env = {**hub_env(local_hub, tmp_path), "ACCELERATE_USE_CPU": "1"}
    launch = [*ACCELERATE_CPU_LAUNCH, "--multi_gpu", "--num_processes", "2", "-m", "hf_transfer", "train", str(recipe)]
    proc = subprocess.run(launch, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.count("published ") == 1
    assert len(local_hub.commits(REPO)) == 2  # the Hub's creation commit + one publish
    assert len(local_hub.commits(SPACE, "space")) == 2
    assert json.loads((out / "metrics.json").read_text())["train"]["processes"] == 2
