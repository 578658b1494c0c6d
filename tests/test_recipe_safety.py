"""Recipe safety: duplicate keys, YAML aliases, likely-mistaken values, look-alike keys, one override function, and
URLs printed without their credentials. Every refusal is one short RecipeError that names the key."""

import logging
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import python_env

from hf_transfer.cli import main
from hf_transfer.compare import recipe_tree_with
from hf_transfer.errors import SourceError
from hf_transfer.recipe import MAX_ERROR_LINES, RecipeError, apply_overrides, load_recipe, read_recipe_tree
from hf_transfer.sources import hub_reachable, redact_url, resolve_dataset_source, resolve_model

ROOT = Path(__file__).resolve().parents[1]
LORA = ROOT / "recipes/sst2-minilm-lora.yaml"


def _raw(tmp_path: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _error(path: Path, overrides: tuple[str, ...] = (), **kwargs) -> str:
    with pytest.raises(RecipeError) as error:
        load_recipe(path, overrides, **kwargs)
    return str(error.value)


# -- duplicate keys ---------------------------------------------------------------------------------------------------


def test_a_section_written_twice_is_an_error_naming_both_lines(tmp_path):
    path = _raw(
        tmp_path,
        "model: org/m\ndata: {source: x}\ntraining:\n  lr: 0.1\nstrategy: {kind: head}\ntraining:\n  epochs: 2\n",
    )
    message = _error(path)
    assert message == f"{path}: key 'training' is written twice (lines 3 and 6); keep one"


def test_a_nested_key_written_twice_names_its_path(tmp_path):
    path = _raw(tmp_path, "model: org/m\ndata:\n  source: x\n  text_column: a\n  label_column: b\n  text_column: c\n")
    assert "key 'data.text_column' is written twice (lines 4 and 6)" in _error(path)


def test_a_key_written_twice_inside_an_override_is_an_error():
    message = _error(LORA, ("strategy.head={type: linear, type: mlp}",))
    assert "key 'type' is written twice (line 1, columns 2 and 16)" in message


def test_a_duplicate_key_through_the_cli_is_one_error_line_and_exit_code_2(tmp_path, capsys):
    path = _raw(tmp_path, "model: org/m\ndata: {source: x}\nmodel: org/other\n")
    code = main(["train", str(path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err == f"error: {path}: key 'model' is written twice (lines 1 and 3); keep one\n"


def test_the_loader_reads_every_bundled_recipe_as_safe_load_does():
    for path in sorted((ROOT / "recipes").glob("*.yaml")):
        assert read_recipe_tree(path) == yaml.safe_load(path.read_text(encoding="utf-8")), path.name


def test_safe_load_semantics_stay_otherwise(tmp_path):
    # An inline merge key is not a duplicate: the key written beside it wins, as in YAML 1.1.
    path = _raw(tmp_path, "model: org/m\ndata: {source: x}\ntraining: {<<: {lr: 0.1, epochs: 2}, lr: 0.2}\n")
    training = load_recipe(path).training
    assert (training.lr, training.epochs) == (0.2, 2)
    evil = _raw(tmp_path, "model: !!python/object/apply:os.system ['echo pwned']\ndata: {source: x}\n", "evil.yaml")
    assert "not valid YAML" in _error(evil)


# -- aliases, nesting and the length of a message ---------------------------------------------------------------------

BILLION_LAUGHS = "model: org/m\ndata: {source: x}\n" + "".join(
    f"{name}: &{name} [{', '.join([f'*{previous}'] * 9) if previous else ', '.join(['lol'] * 9)}]\n"
    for previous, name in zip([None, *"abcdefgh"], "abcdefghi", strict=True)
)


def test_a_billion_laughs_recipe_is_refused_at_once_with_a_short_message(tmp_path):
    # Model and label names from the bomb: unrefused, validating or printing them expands 9^9 strings. The child
    # runs with a memory cap so that on failure it dies instead of taking the machine with it.
    bomb = _raw(tmp_path, BILLION_LAUGHS + "strategy: {target_modules: *i}\n")
    assert len(bomb.read_bytes()) < 1024
    child = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))\n"
        "from hf_transfer.recipe import RecipeError, load_recipe\n"
        "try:\n    load_recipe(sys.argv[1])\nexcept RecipeError as error:\n    print(error)\n"
    )
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", child, str(bomb)], env=python_env(), capture_output=True, text=True, timeout=120
    )
    assert time.monotonic() - start < 30
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == f"{bomb}: line 4: YAML aliases (*name) are not allowed in a recipe; write the value out\n"


def test_nesting_deeper_than_a_recipe_needs_is_refused(tmp_path):
    path = _raw(tmp_path, "model: " + "[" * 400 + "]" * 400 + "\ndata: {source: x}\n")
    assert _error(path) == f"{path}: line 1: nested more than 32 levels deep"


def test_an_invalid_value_is_shown_cut_short(tmp_path):
    path = _raw(tmp_path, f"model: org/m\ndata: {{source: x}}\ntraining: {{lr: {'x' * 100_000}}}\n")
    message = _error(path)
    assert message.startswith(f"{path}: training.lr = 'xxxx") and " ... is invalid: " in message
    assert len(message) < len(str(path)) + 200


def test_a_recipe_of_many_mistakes_prints_a_bounded_list(tmp_path):
    unknown = "".join(f"  typo{i}: 1\n" for i in range(200))
    message = _error(_raw(tmp_path, f"model: org/m\ndata: {{source: x}}\ntraining:\n{unknown}"))
    lines = message.splitlines()
    assert len(lines) == MAX_ERROR_LINES
    assert lines[0].endswith(
        "unknown key 'training.typo0'; check its spelling (see `hf-transfer schema` for every key)"
    )
    assert lines[-1].endswith(f"... and {200 - MAX_ERROR_LINES + 1} more errors")


# -- values that are a user's mistake ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["strategy.kind=partial", "strategy.layers=true"], "strategy.layers = True is invalid: true/false is not a"),
        (["training.epochs=false"], "training.epochs = False is invalid: true/false is not a number"),
        (["training.lr=true"], "training.lr = True is invalid: true/false is not a number"),
        (["data.augmentation.crop_scale=[true, 1.0]"], "data.augmentation.crop_scale = [True, 1.0] is invalid"),
        (["training.class_weights={pos: true}"], "training.class_weights = {'pos': True} is invalid: true/false"),
        (["strategy.target_modules=[]"], "strategy.target_modules = [] is invalid: an empty list would adapt nothing"),
        (["data.label_names=[]"], "data.label_names = [] is invalid: an empty list"),
        (["training.lr=.inf"], "training.lr = inf is invalid: Input should be a finite number"),
        (["training.warmup=.inf"], "training.warmup = inf is invalid: Input should be a finite number"),
        (["training.lr=nan"], "training.lr = 'nan' is invalid: Input should be a finite number"),
        (["training.max_grad_norm=1e999"], "training.max_grad_norm = inf is invalid: Input should be a finite"),
        (["data.augmentation.crop_scale=[0.5, .inf]"], "crop_scale.1 = inf is invalid: Input should be a finite"),
        (["training.class_weights={pos: .inf}"], ".pos = inf is invalid: Input should be a finite number"),
        (["model="], "model = '' is invalid: an empty string; give a value or leave the key out"),
        (["data.source="], "data.source = '' is invalid: an empty string"),
        (["data.source=' '"], "data.source = ' ' is invalid: an empty string"),
        (["training.output_dir="], "training.output_dir = '' is invalid: an empty string"),
        (["strategy.feature_cache=''"], "strategy.feature_cache = '' is invalid: an empty string"),
        (["data.files={train: ''}"], "data.files = {'train': ''} is invalid: an empty string"),
    ],
)
def test_a_likely_mistaken_value_is_refused_naming_the_key(overrides, fragment):
    message = _error(LORA, tuple(overrides))
    assert fragment in message, message


def test_an_empty_output_dir_flag_is_refused():
    assert "training.output_dir = '' is invalid: an empty string" in _error(LORA, output_dir="")


def test_non_finite_numbers_written_in_the_file_are_refused(tmp_path):
    path = _raw(tmp_path, "model: org/m\ndata: {source: x}\ntraining: {lr: .nan, warmup: .inf}\n")
    message = _error(path)
    assert "training.lr = nan is invalid: Input should be a finite number" in message
    assert "training.warmup = inf is invalid: Input should be a finite number" in message


def test_booleans_and_text_stay_where_they_are_meant():
    recipe = load_recipe(
        LORA,
        [
            "training.group_by_length=false",
            "strategy.feature_cache=false",
            "trust_remote_code=true",
            "strategy.target_modules=all-linear",
            "training.lr=1e-4",
        ],
    )
    assert recipe.training.group_by_length is False and recipe.strategy.feature_cache is False
    assert recipe.trust_remote_code is True and recipe.strategy.target_modules == "all-linear"
    assert recipe.training.lr == 1e-4


# -- unknown and look-alike keys --------------------------------------------------------------------------------------


def test_an_unknown_key_suggests_the_nearest_field():
    message = _error(LORA, ("training.epoch=2",))
    assert message.endswith(
        "unknown key 'training.epoch'; check its spelling: did you mean `training.epochs`? "
        "(see `hf-transfer schema` for every key)"
    )


def test_a_nested_unknown_key_in_the_file_suggests_within_its_section(tmp_path):
    path = _raw(tmp_path, "model: org/m\ndata: {source: x}\nstrategy: {head: {typ: mlp}}\n")
    assert "unknown key 'strategy.head.typ'; check its spelling: did you mean `strategy.head.type`?" in _error(path)


def test_a_key_far_from_any_field_gets_no_suggestion():
    message = _error(LORA, ("training.zzzz=2",))
    assert "unknown key 'training.zzzz'; check its spelling (see" in message and "did you mean" not in message


@pytest.mark.parametrize(
    "typed, shown, named",
    [
        ("epo\u200bchs", "training.epo\\u200bchs", "U+200B ZERO WIDTH SPACE"),
        ("\u0435pochs", "training.\\u0435pochs", "U+0435 CYRILLIC SMALL LETTER IE"),
    ],
)
def test_a_key_that_only_looks_right_is_shown_escaped(tmp_path, typed, shown, named):
    path = _raw(tmp_path, f"model: org/m\ndata: {{source: x}}\ntraining: {{{typed}: 2}}\n")
    message = _error(path)
    assert message == (
        f"{path}: unknown key '{shown}' (it contains a non-ASCII or invisible character: {named}); check its "
        "spelling: did you mean `training.epochs`? (see `hf-transfer schema` for every key)"
    )
    assert message.isascii()
    from_override = _error(LORA, (f"training.{typed}=2",))
    assert f"unknown key '{shown}'" in from_override and "\u200b" not in from_override


# -- one override function --------------------------------------------------------------------------------------------


def test_overrides_parse_as_yaml_and_keep_typed_text_for_string_fields():
    tree = {"model": "org/m", "data": {"source": "x"}}
    apply_overrides(tree, ["training.lr=3e-5", "data.config=1.0", "model=1.5", "strategy.target_modules=[q, v]"])
    assert tree == {
        "model": "1.5",
        "data": {"source": "x", "config": "1.0"},
        "training": {"lr": 3e-5},
        "strategy": {"target_modules": ["q", "v"]},
    }


def test_a_null_for_a_key_the_tree_lacks_leaves_it_absent():
    tree = {"model": "org/m", "data": {"source": "x", "config": "c"}, "hub": None}
    apply_overrides(tree, ["strategy.layers=null", "hub.space=null", "training.seed=null", "data.config=null"])
    assert tree == {"model": "org/m", "data": {"source": "x", "config": None}, "hub": None}
    recipe = load_recipe(LORA, ["hub.space=null", "training.save_total_limit=null"])
    assert recipe.hub is None and recipe.training.save_total_limit == 2
    with pytest.raises(RecipeError, match=r"training.seed = None is invalid"):  # one the recipe sets is reset
        load_recipe(LORA, ["training.seed=null"])


def test_an_override_into_a_value_that_is_not_a_section_names_it():
    with pytest.raises(RecipeError, match=r"^override 'model.name=x': model is not a section$"):
        apply_overrides({"model": "org/m"}, ["model.name=x"])


def test_variants_held_in_memory_get_the_same_overrides():
    tree = recipe_tree_with(load_recipe(LORA), ["data.config=1.0", "hub.repo_id=me/x", "strategy.layers=null"])
    assert tree["data"]["config"] == "1.0" and tree["hub"] == {"repo_id": "me/x"}
    assert tree["strategy"]["layers"] is None


# -- URLs without their credentials -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, shown",
    [
        ("http://user:secret@hub.example:8080/api", "http://***@hub.example:8080/api"),
        ("https://hf_abcdef@hub.example", "https://***@hub.example"),
        ("https://h.example/f?token=abc&rev=main", "https://h.example/f?token=***&rev=main"),
        (
            "https://s3.example/o?X-Amz-Signature=ab&X-Amz-Credential=cd&a=b",
            "https://s3.example/o?X-Amz-Signature=***&X-Amz-Credential=***&a=b",
        ),
        ("https://h.example/cb#access_token=xyz", "https://h.example/cb#access_token=***"),
        ("https://huggingface.co", "https://huggingface.co"),
        ("http://[::1", "<a URL that could not be parsed, hidden>"),
    ],
)
def test_redact_url(url, shown):
    assert redact_url(url) == shown


@pytest.fixture
def fresh_hub_probe():
    hub_reachable.cache_clear()
    yield
    hub_reachable.cache_clear()  # later tests must not inherit this test's endpoint


def test_the_unreachable_hub_log_line_hides_the_endpoint_credentials(monkeypatch, caplog, fresh_hub_probe):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", f"http://user:secret@127.0.0.1:{port}/?token=hf_tok")
    caplog.set_level(logging.INFO, logger="hf_transfer.sources")
    assert hub_reachable(timeout=1.0) is False
    assert f"Hub at http://***@127.0.0.1:{port}/?token=*** is unreachable" in caplog.text
    assert "secret" not in caplog.text and "hf_tok" not in caplog.text


@pytest.mark.parametrize("resolve", [resolve_model, resolve_dataset_source])
def test_source_errors_hide_credentials_in_a_url(resolve, fresh_hub_probe):
    with pytest.raises(SourceError) as error:
        resolve("https://user:secret@hub.example/org/name?token=hf_tok")
    message = str(error.value)
    assert "'https://***@hub.example/org/name?token=***'" in message
    assert "secret" not in message and "hf_tok" not in message


def test_publish_never_prints_a_credential_inside_the_hub_endpoint(tmp_path, monkeypatch):
    """An unreachable Hub whose endpoint carries user:password: the one error line names the endpoint, not the
    password."""
    from huggingface_hub import constants

    from hf_transfer.hub import PublishError, publish

    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "bert", "id2label": {"0": "a", "1": "b"}}', encoding="utf-8")
    (folder / "run.json").write_text('{"task": "text-classification", "strategy": "head"}', encoding="utf-8")
    monkeypatch.setattr(constants, "ENDPOINT", "http://hub-user:s3cret-pass@127.0.0.1:9")
    with pytest.raises(PublishError, match="HF_HUB_OFFLINE is set") as raised:  # the tests run offline
        publish(folder, "me/model")
    assert "s3cret-pass" not in str(raised.value)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(PublishError, match="could not reach the Hub") as raised:
        publish(folder, "me/model")
    message = str(raised.value)
    assert "s3cret-pass" not in message and "hub-user" not in message
    assert "127.0.0.1:9" in message
