"""Ownership of output folders: --overwrite clears only what hf_transfer wrote in a folder it marked; the places a run
never goes; one run per folder (the lock); --overwrite with --resume refused; compare and advise keep others' files."""

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from accelerate import Accelerator, debug_launcher
from accelerate.state import AcceleratorState
from conftest import recipe_yaml, sentiment_rows, write_csv

from hf_transfer import ownership
from hf_transfer.advise import advise
from hf_transfer.cli import main
from hf_transfer.compare import REPORT_FILES, compare
from hf_transfer.errors import DataError, OutputDirError
from hf_transfer.ownership import LOCK_FILE, RUN, marker_path, write_marker
from hf_transfer.recipe import load_recipe
from hf_transfer.train import train

try:
    import fcntl
except ImportError:
    fcntl = None
needs_flock = pytest.mark.skipif(fcntl is None, reason="no flock on this platform")


def tree(folder: Path) -> dict[str, str]:
    """Every file and folder under `folder` (hidden ones too) with its content hash: equal trees lost nothing."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(folder.rglob("*"))
    }


def train_cli(capsys, *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["train", *args])
    return code, capsys.readouterr().err


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


@pytest.fixture
def fake_home(tmp_path, monkeypatch) -> Path:
    """A home folder with a user's documents and ssh keys; $HOME points at it."""
    home = tmp_path / "home"
    (home / "Documents" / "taxes").mkdir(parents=True)
    (home / "Documents" / "thesis.docx").write_bytes(b"four years of work")
    (home / "Documents" / "taxes" / "2024.pdf").write_bytes(b"%PDF-1.7 receipts")
    (home / ".ssh").mkdir()
    (home / ".ssh" / "id_ed25519").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n", encoding="utf-8")
    (home / ".bashrc").write_text("export PATH=$HOME/bin:$PATH\n", encoding="utf-8")
    monkeypatch.setenv("HOME", str(home))
    return home


@pytest.fixture
def project(tmp_path, tiny_bert, monkeypatch) -> Path:
    """A user's project folder, the current folder: its recipe, its data and its model (real ones, so an old
    hf_transfer would have trained and then cleared the folder)."""
    folder = tmp_path / "project"
    shutil.copytree(tiny_bert, folder / "model")
    (folder / "data").mkdir()
    for split, seed in (("train", 1), ("validation", 2), ("test", 3)):
        write_csv(folder / "data" / f"{split}.csv", sentiment_rows(24 if split == "train" else 8, seed))
    recipe_yaml(folder / "recipe.yaml", "model", "data", Path("."), training={"epochs": 1})
    monkeypatch.chdir(folder)
    return folder


def fake_run(folder: Path) -> Path:
    """What a run of this hf_transfer leaves: its marker first, then its files."""
    folder.mkdir(parents=True)
    write_marker(folder, RUN)
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "metrics.json").write_text('{"test": {"accuracy": 0.9}}\n', encoding="utf-8")
    (folder / "checkpoints" / "step-00000004").mkdir(parents=True)
    (folder / "checkpoints" / "step-00000004" / "model.safetensors").write_bytes(b"weights")
    return folder


@pytest.fixture(scope="module")
def real_run(tmp_path_factory, tiny_bert, sentiment_folder) -> Path:
    """One real LoRA run of the tiny BERT (its folder holds adapter/ beside the merged model)."""
    tmp = tmp_path_factory.mktemp("owned")
    recipe = recipe_yaml(tmp / "r.yaml", tiny_bert, sentiment_folder, tmp / "run", strategy={"kind": "lora"})
    return train(load_recipe(recipe, ["training.epochs=1"]))


# -- --overwrite never deletes what hf_transfer did not write --------------------------------------------------------


def test_overwrite_into_the_users_documents_refuses_and_deletes_nothing(fake_home, make_recipe, capsys):
    before = tree(fake_home)
    documents = fake_home / "Documents"
    code, err = train_cli(capsys, str(make_recipe()), "--output-dir", str(documents), "--overwrite")
    assert code == 2
    line = one_error_line(err)
    assert f"training.output_dir {str(documents)!r} holds files hf_transfer did not write (first: 'taxes')" in line
    assert tree(fake_home) == before


@pytest.mark.parametrize("where", ["home", "root"])
def test_home_and_root_are_refused_without_suggesting_overwrite(fake_home, make_recipe, capsys, where):
    before = tree(fake_home)
    target = {"home": str(fake_home), "root": "/"}[where]
    code, err = train_cli(capsys, str(make_recipe()), "--output-dir", target)
    assert code == 2
    line = one_error_line(err)
    reason = {"home": "is your home folder", "root": "is the root folder"}[where]
    assert f"training.output_dir {target!r} {reason}" in line and "--overwrite" not in line
    assert tree(fake_home) == before


def test_output_dir_dot_in_a_project_keeps_the_recipe_the_data_and_the_model(project, capsys):
    before = tree(project)
    code, err = train_cli(capsys, "recipe.yaml", "--overwrite")
    assert code == 2
    line = one_error_line(err)
    assert "training.output_dir '.' is the current folder" in line and "--overwrite" not in line
    assert tree(project) == before


@pytest.mark.parametrize(
    ("output", "reason"),
    [
        ("..", "contains the current folder"),
        ("model/..", "is the current folder"),
    ],
)
def test_an_ancestor_of_the_current_folder_is_refused(project, capsys, output, reason):
    before = tree(project.parent)
    code, err = train_cli(capsys, "recipe.yaml", "--output-dir", output, "--overwrite")
    assert code == 2
    line = one_error_line(err)
    assert f"training.output_dir {output!r} {reason}" in line and "--overwrite" not in line
    assert tree(project.parent) == before


def test_a_folder_holding_the_recipe_the_data_or_the_model_is_refused(tmp_path, tiny_bert, capsys):
    data = tmp_path / "datasets" / "reviews"
    data.mkdir(parents=True)
    (tmp_path / "recipes").mkdir()
    model = shutil.copytree(tiny_bert, tmp_path / "models" / "bert")
    for split, seed in (("train", 1), ("validation", 2), ("test", 3)):
        write_csv(data / f"{split}.csv", sentiment_rows(24 if split == "train" else 8, seed))
    files = {split: str(data / f"{split}.csv") for split in ("train", "validation", "test")}
    recipe = recipe_yaml(tmp_path / "recipes" / "r.yaml", model, "reviews", tmp_path / "x", data={"files": files})
    before = tree(tmp_path)
    for output, reason in (
        (tmp_path / "datasets", f"contains {str(data / 'test.csv')!r} (data.files.test)"),  # yaml sorts the splits
        (tmp_path / "recipes", f"contains the recipe file {str(recipe)!r}"),
        (tmp_path / "models", f"contains {str(model)!r} (model)"),
    ):
        code, err = train_cli(capsys, str(recipe), "--output-dir", str(output), "--overwrite")
        assert code == 2
        line = one_error_line(err)
        assert f"training.output_dir {str(output)!r} {reason}" in line and "--overwrite" not in line
    assert tree(tmp_path) == before


def test_a_real_run_folder_with_a_users_file_is_refused_whole(real_run, tmp_path, capsys):
    folder = tmp_path / "run"
    shutil.copytree(real_run, folder)
    (folder / "notes.txt").write_text("what I tried\n", encoding="utf-8")
    before = tree(folder)
    code, err = train_cli(capsys, str(folder / "recipe.yaml"), "--output-dir", str(folder), "--overwrite")
    assert code == 2
    assert f"{str(folder)!r} holds files hf_transfer did not write (first: 'notes.txt')" in one_error_line(err)
    assert tree(folder) == before


def test_every_file_a_real_run_writes_is_known_and_the_lock_is_gone(real_run):
    names = sorted(p.name for p in real_run.iterdir())
    assert LOCK_FILE not in names  # released (and removed) when the run ended
    assert {".hf_transfer-run", "adapter", "checkpoints", "tokenizer.json", "model.safetensors"} <= set(names)
    assert [n for n in names if not ownership.is_run_file(real_run, n, set())] == []
    recorded = json.loads(marker_path(real_run, RUN).read_text())
    assert recorded["produced_by"] == "hf_transfer" and recorded["kind"] == RUN
    assert {"adapter", "model.safetensors", "run.json", "README.md"} <= set(recorded["files"])


def test_overwrite_clears_only_the_project_files_of_a_marked_folder(tmp_path):
    folder = fake_run(tmp_path / "run")
    (folder / "tokenizer.weird").write_text("written by this run\n", encoding="utf-8")
    write_marker(folder, RUN, ["tokenizer.weird"])  # recorded by the run that wrote it
    ownership.claim_output_dir(folder, overwrite=True, resume=False)
    ownership.clear_output_dir(folder, is_main=True)
    assert sorted(p.name for p in folder.iterdir()) == [".hf_transfer-run"]

    # A file nobody recorded, even one that appeared after the check: clearing never touches it.
    fake_run(tmp_path / "again")
    (tmp_path / "again" / "mine.csv").write_text("a,b\n", encoding="utf-8")
    ownership.clear_output_dir(tmp_path / "again", is_main=True)
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == [".hf_transfer-run", "mine.csv"]


def test_a_run_of_an_older_hf_transfer_is_left_for_the_user_to_empty(real_run, tmp_path, capsys):
    folder = tmp_path / "old"
    shutil.copytree(real_run, folder)
    marker_path(folder, RUN).unlink()  # as written before folder markers: run.json still says produced_by
    before = tree(folder)
    code, err = train_cli(capsys, str(folder / "recipe.yaml"), "--output-dir", str(folder), "--overwrite")
    assert code == 2
    line = one_error_line(err)
    assert "holds a run of an hf_transfer older than its folder marker" in line and "empty the folder yourself" in line
    assert tree(folder) == before


def test_a_failed_validation_leaves_no_folder_behind(make_recipe, tmp_path):
    recipe = load_recipe(make_recipe(data={"text_column": "review"}), output_dir=str(tmp_path / "new" / "run"))
    with pytest.raises(DataError, match="'review'"):
        train(recipe)
    assert not (tmp_path / "new").exists()


def test_a_run_that_fails_before_writing_takes_back_its_folder(tmp_path):
    out = tmp_path / "late"

    @ownership.releasing_output_locks
    def fails_after_taking() -> None:
        ownership.take_output_dir(out, Accelerator(), overwrite=False, resume=False)
        assert sorted(p.name for p in out.iterdir()) == [".hf_transfer-lock", ".hf_transfer-run"]
        raise RuntimeError("metric_for_best not computed")

    with pytest.raises(RuntimeError):
        fails_after_taking()
    assert not out.exists()


# -- one run per folder ----------------------------------------------------------------------------------------------


def hold_lock(folder: Path):
    """Hold `folder`'s lock as another run would (a separate open file: flock then conflicts, even in-process)."""
    handle = open(folder / LOCK_FILE, "a+", encoding="utf-8")
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    handle.write("4242\n")
    handle.flush()
    return handle


@needs_flock
def test_a_second_run_into_a_locked_folder_is_refused(tmp_path, make_recipe):
    folder = fake_run(tmp_path / "busy")
    holder = hold_lock(folder)
    try:
        before = tree(folder)
        message = f"training.output_dir {str(folder)!r} is in use by another hf_transfer run (pid 4242)"
        recipe = load_recipe(make_recipe(), output_dir=str(folder))
        with pytest.raises(OutputDirError) as raised:
            train(recipe, overwrite=True)
        assert str(raised.value).startswith(message)
        # Both started together: both passed the early check; the lock, taken once inputs loaded, stops the second.
        with pytest.raises(OutputDirError, match="in use by another hf_transfer run"):
            ownership.take_output_dir(folder, Accelerator(), overwrite=True, resume=False)
        assert tree(folder) == before
    finally:
        holder.close()


@needs_flock
def test_overwrite_keeps_the_lock_file_of_the_run_holding_the_folder(tmp_path):
    folder = fake_run(tmp_path / "run")
    holder = hold_lock(folder)
    try:
        ownership.clear_output_dir(folder, is_main=True)
        assert sorted(p.name for p in folder.iterdir()) == [".hf_transfer-lock", ".hf_transfer-run"]
        with pytest.raises(OutputDirError, match=r"in use .*\(pid 4242\)"):
            ownership.claim_output_dir(folder, overwrite=True, resume=False)
    finally:
        holder.close()


@needs_flock
def test_the_lock_of_a_killed_run_does_not_block(tmp_path):
    folder = fake_run(tmp_path / "run")
    code = (
        "import fcntl, os, sys; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); f.write('99\\n'); "
        "f.flush(); os.kill(os.getpid(), 9)"
    )
    subprocess.run([sys.executable, "-c", code, str(folder / LOCK_FILE)], timeout=60)
    assert (folder / LOCK_FILE).read_text() == "99\n"  # left behind by the killed process

    @ownership.releasing_output_locks
    def run() -> None:
        ownership.claim_output_dir(folder, overwrite=True, resume=False)
        ownership.take_output_dir(folder, Accelerator(), overwrite=True, resume=False)
        (folder / "model.safetensors").write_bytes(b"new weights")

    run()
    assert sorted(p.name for p in folder.iterdir()) == [".hf_transfer-run", "model.safetensors"]


# -- --overwrite with --resume ---------------------------------------------------------------------------------------


def test_overwrite_with_resume_is_an_error_on_the_command_line_and_in_python(tmp_path, make_recipe, capsys):
    folder = fake_run(tmp_path / "out")
    before = tree(folder)
    with pytest.raises(SystemExit) as exited:
        main(["train", str(make_recipe()), "--overwrite", "--resume"])
    assert exited.value.code == 2
    assert "argument --resume: not allowed with argument --overwrite" in capsys.readouterr().err
    with pytest.raises(OutputDirError, match="--overwrite and --resume together"):
        train(load_recipe(make_recipe()), overwrite=True, resume=True)
    assert tree(folder) == before


# -- compare and advise ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overwrite", [False, True])
def test_compare_keeps_a_users_results_md(make_recipe, tmp_path, capsys, overwrite):
    folder = tmp_path / "my-results"
    folder.mkdir()
    (folder / "results.md").write_text("# my own notes\n", encoding="utf-8")
    flags = ["--overwrite"] if overwrite else []
    capsys.readouterr()
    code = main(["compare", str(make_recipe()), "--strategies", "head", "--output-dir", str(folder), *flags])
    assert code == 2
    expected = f"{str(folder / 'results.md')!r} was not written by hf-transfer compare, so it is not replaced"
    assert expected in one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in folder.iterdir()) == ["results.md"]  # nothing trained, nothing written
    assert (folder / "results.md").read_text() == "# my own notes\n"


def test_compare_replaces_its_own_report_only_with_overwrite(tmp_path):
    folder = tmp_path / "cmp"
    ownership.claim_report_files(folder, REPORT_FILES, "compare", replace_own=True)
    for name in REPORT_FILES:
        (folder / name).write_text("an earlier comparison\n", encoding="utf-8")
    with pytest.raises(OutputDirError, match=r"holds an earlier compare report \(results.json\); pass --overwrite"):
        ownership.check_report_files(folder, REPORT_FILES, "compare", replace_own=False)
    ownership.check_report_files(folder, REPORT_FILES, "compare", replace_own=True)
    with pytest.raises(OutputDirError, match="not written by hf-transfer advise"):
        ownership.check_report_files(folder, ["results.md"], "advise", replace_own=True)  # another kind's marker


def test_advise_keeps_a_users_advise_md(make_recipe, tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "advise.md").write_text("advice from a colleague\n", encoding="utf-8")
    with pytest.raises(OutputDirError, match=r"advise.md' was not written by hf-transfer advise"):
        advise(make_recipe(), output_dir=folder, sample=40)
    assert sorted(p.name for p in folder.iterdir()) == ["advise.md"]
    assert (folder / "advise.md").read_text() == "advice from a colleague\n"


def test_compare_refuses_a_foreign_run_folder_before_training_any(make_recipe, tmp_path):
    folder = tmp_path / "cmp"
    (folder / "full").mkdir(parents=True)
    (folder / "full" / "draft.txt").write_text("mine\n", encoding="utf-8")
    with pytest.raises(OutputDirError, match=r"full' holds files hf_transfer did not write \(first: 'draft.txt'\)"):
        compare(make_recipe(), "head,full", output_dir=folder, overwrite=True)
    assert sorted(p.name for p in folder.iterdir()) == ["full"]  # head did not train first


@needs_flock
def test_under_two_processes_both_refuse_a_locked_folder_together(tmp_path):
    """Only the main process takes the lock; its refusal reaches the other process, so neither waits forever."""
    folder = fake_run(tmp_path / "run")
    holder = hold_lock(folder)

    def rank() -> None:
        AcceleratorState._reset_state(reset_partial_state=True)  # forked from pytest: start from this launch's env
        accelerator = Accelerator(cpu=True)
        try:
            ownership.take_output_dir(folder, accelerator, overwrite=True, resume=False)
            outcome = "took it"
        except OutputDirError as error:
            outcome = str(error)
        accelerator.wait_for_everyone()
        (tmp_path / f"rank{accelerator.process_index}.txt").write_text(outcome, encoding="utf-8")

    try:
        before = tree(folder)
        debug_launcher(rank, num_processes=2)
        for index in (0, 1):
            assert "in use by another hf_transfer run (pid 4242)" in (tmp_path / f"rank{index}.txt").read_text()
        assert tree(folder) == before
    finally:
        holder.close()


def test_compare_without_overwrite_names_a_foreign_run_folder_not_the_flag(make_recipe, tmp_path):
    folder = tmp_path / "cmp"
    (folder / "head").mkdir(parents=True)
    (folder / "head" / "draft.txt").write_text("mine\n", encoding="utf-8")
    with pytest.raises(OutputDirError, match=r"did not write \(first: 'draft.txt'\)") as raised:
        compare(make_recipe(), "head", output_dir=folder)
    assert "pass --overwrite" not in str(raised.value)
    assert (folder / "head" / "draft.txt").read_text() == "mine\n"
