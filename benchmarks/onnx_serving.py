"""Serving on a CPU: `hf-transfer predict --file` with each runtime (torch, ONNX fp32, ONNX int8) against the
transformers `pipeline(..., batch_size=32)` a user would write, on SST-2 test (texts/s, accuracy), CoNLL-2003 test
(sentences/s, entity F1 from `hf-transfer evaluate --runtime`) and ants/bees val (images/s, accuracy); and the local
Space's latency (p50/p95 of single requests), torch vs int8: through gradio_client, and through Gradio's own queue
protocol as the page's JavaScript client speaks it (join, then the event stream), timed to the answer; beside them
the floor, the same requests to an app of the Space's shape whose function answers at once.

Every figure is a whole command as a user runs it (interpreter start, model load and all), in alternating repeats so
a change in the machine's load spreads over every runtime; medians are reported. Output folders are copied into the
work folder (the originals are never touched) and exported there with `hf-transfer export --int8` when they have no
export yet; without a folder, one is trained from the shipped recipe.

    python benchmarks/onnx_serving.py --sst2 OUTPUT_DIR --ants OUTPUT_DIR --conll OUTPUT_DIR \\
        --json benchmarks/results/onnx_serving.json --markdown onnx_serving.md

`--baseline-ref REF` adds `predict` as of that commit (`torch, before`); it must be able to read the folders'
recipe.yaml, which code older than the folders' keys refuses.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sst2_strategies import ROOT, child_env, machine  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
SST2_TEST = SHARED / "sst2" / "test.tsv"
ANTS_VAL = SHARED / "hymenoptera_data" / "val"
CONLL_TEST = SHARED / "conll2003" / "test.jsonl"
ENTITY = re.compile(r"""(\S+) (?:'[^']*'|"[^"]*") (\d+-\d+) \d+\.\d+""")
RUNTIMES = ("torch", "onnx", "onnx-int8")
PIPELINE = """
import sys
from transformers import pipeline
task, folder, inputs = sys.argv[1:4]
values = [line.strip() for line in open(inputs, encoding="utf-8") if line.strip()]
if task == "token-classification":
    tagger = pipeline(task, model=folder, aggregation_strategy="first", batch_size=32)
    for entities in tagger(values):
        print(", ".join(f"{e['entity_group']} {e['start']}-{e['end']}" for e in entities) or "-")
    sys.exit()
classifier = pipeline(task, model=folder, batch_size=32 if task == "text-classification" else 16)
for result in classifier(values):
    print(result["label"] if isinstance(result, dict) else result[0]["label"])
"""
"""The peer: what a user of transformers writes to label a file with the saved model (default truncation off: no
SST-2 sentence is longer than the model's 128 tokens, and CoNLL-2003's longest test sentence is 124 words)."""


def run(command: list[str], env: dict[str, str], out: Path, cwd: Path = ROOT) -> tuple[float, float]:
    """Run a command with stdout to `out`; returns (wall seconds, peak RSS MB of that process)."""
    started = time.perf_counter()
    with open(out, "w", encoding="utf-8") as stdout, open(out.with_suffix(".err"), "w", encoding="utf-8") as stderr:
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env, cwd=cwd)
        _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"{' '.join(command)} failed:\n{out.with_suffix('.err').read_text()[-3000:]}")
    return elapsed, usage.ru_maxrss / 1024


def prepare(folder: Path | None, recipe: str, workdir: Path, name: str, env: dict[str, str]) -> tuple[Path, float]:
    """A copy of the output folder (trained from the recipe when none is given), exported; returns it and the export
    time (0 when the copy already had an export)."""
    target = workdir / name
    if folder is None:
        command = [sys.executable, "-m", "hf_transfer", "train", str(ROOT / "recipes" / recipe)]
        run(command + ["--output-dir", str(target)], env, workdir / f"train-{name}.log")
    else:
        shutil.copytree(folder, target, ignore=shutil.ignore_patterns("checkpoints"))
    if (target / "onnx" / "manifest.json").is_file():
        return target, 0.0
    command = [sys.executable, "-m", "hf_transfer", "export", str(target), "--int8"]
    seconds, _ = run(command, env, workdir / f"export-{name}.json")
    return target, seconds


def sst2_inputs(workdir: Path) -> tuple[Path, list[str]]:
    with open(SST2_TEST, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    path = workdir / "sst2_test.txt"
    path.write_text("".join(row["sentence"].strip() + "\n" for row in rows), encoding="utf-8")
    return path, [("negative", "positive")[int(row["label"])] for row in rows]


def ants_inputs(workdir: Path) -> tuple[Path, list[str]]:
    photos = sorted(p for p in ANTS_VAL.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    path = workdir / "ants_val.txt"
    path.write_text("".join(f"{p}\n" for p in photos), encoding="utf-8")
    return path, [p.parent.name for p in photos]


def conll_inputs(workdir: Path) -> tuple[Path, None]:
    """CoNLL-2003 test sentences as text (words joined by spaces); no per-line gold: F1 comes from `evaluate`."""
    rows = [json.loads(line) for line in CONLL_TEST.read_text(encoding="utf-8").splitlines() if line.strip()]
    path = workdir / "conll_test.txt"
    path.write_text("".join(" ".join(row["tokens"]) + "\n" for row in rows), encoding="utf-8")
    return path, None


def entity_scores(folder: Path, workdir: Path, env: dict[str, str]) -> dict[str, dict[str, float]]:
    """Entity F1 / precision / recall on the test split per runtime, from `hf-transfer evaluate` (not timed)."""
    scores = {}
    for runtime in RUNTIMES:
        out = workdir / f"{folder.name}-evaluate-{runtime}.json"
        run(
            [sys.executable, "-m", "hf_transfer", "evaluate", str(folder), "--split", "test", "--runtime", runtime],
            env,
            out,
        )
        found = json.loads(out.read_text(encoding="utf-8"))
        scores[runtime] = {key: found[key] for key in ("f1", "precision", "recall", "accuracy")}
    return scores


def commands(task: str, folder: Path, inputs: Path, baseline: Path | None) -> dict[str, tuple[list[str], str]]:
    """name -> (command, how its output names the label: `predict` lines or the peer's one label per line)."""
    predict = [sys.executable, "-m", "hf_transfer", "predict", str(folder), "--file", str(inputs)]
    found = {runtime: (predict + ["--runtime", runtime], "predict") for runtime in RUNTIMES}
    found["pipeline"] = ([sys.executable, "-c", PIPELINE, task, str(folder), str(inputs)], "labels")
    if baseline is not None:  # `predict` before this work: file-order batches, eager torch (PYTHONPATH set below)
        found["torch, before"] = (predict, "predict")
    return found


def throughput(
    task: str,
    folder: Path,
    inputs: Path,
    gold: list[str] | None,
    workdir: Path,
    env: dict[str, str],
    repeats: int,
    baseline: Path | None,
) -> dict[str, Any]:
    """Each command over the whole file, round-robin within each repeat; medians of inputs/s, accuracy per command
    (when `gold` labels the lines; entity tagging is scored by `entity_scores` instead)."""
    runs: dict[str, list[dict[str, float]]] = {}
    labels: dict[str, list[str]] = {}
    lines_in = len(inputs.read_text(encoding="utf-8").splitlines())
    for repeat in range(repeats):
        for name, (command, kind) in commands(task, folder, inputs, baseline).items():
            # `python -m` puts the working folder ahead of PYTHONPATH on sys.path: run the old code from its own.
            source = baseline if name.endswith("before") else ROOT
            out = workdir / f"{folder.name}-{name.replace(', ', '-')}-{repeat}.out"
            seconds, peak = run(command, {**env, "PYTHONPATH": str(source)}, out, cwd=source)
            lines = out.read_text(encoding="utf-8").splitlines()
            labels[name] = [answer_of(line, task) for line in lines] if kind == "predict" else lines
            if len(labels[name]) != lines_in:
                raise RuntimeError(f"{name}: {len(labels[name])} answers for {lines_in} inputs ({out})")
            accuracy = sum(a == b for a, b in zip(labels[name], gold, strict=True)) / len(gold) if gold else None
            runs.setdefault(name, []).append(
                {"s": seconds, "per_s": lines_in / seconds, "rss_mb": peak, "acc": accuracy}
            )
    report = {
        name: {
            "per_s": statistics.median(r["per_s"] for r in rows),
            "s": statistics.median(r["s"] for r in rows),
            "runs_s": [round(r["s"], 2) for r in rows],
            "peak_rss_mb": statistics.median(r["rss_mb"] for r in rows),
            "accuracy": rows[-1]["acc"],
        }
        for name, rows in runs.items()
    }
    flips = sum(a != b for a, b in zip(labels["onnx"], labels["onnx-int8"], strict=True))
    return {"inputs": lines_in, "runtimes": report, "int8_label_changes_vs_fp32": flips}


def marginal_rates(short: dict[str, Any], long: dict[str, Any]) -> dict[str, float]:
    """Inputs per second past start-up: the extra inputs of the long file over the extra (median) seconds they took."""
    extra = long["inputs"] - short["inputs"]
    return {
        name: extra / (long["runtimes"][name]["s"] - row["s"])
        for name, row in short["runtimes"].items()
        if long["runtimes"][name]["s"] > row["s"]
    }


def answer_of(line: str, task: str) -> str:
    """What a `predict` line answers: the label, or for entities their types and character spans (no scores)."""
    answer = line.split("\t", 1)[0]
    if task != "token-classification" or answer == "-":
        return answer
    # `TYPE 'words' start-end score, ...` (the words as Python's repr quotes them): TYPE and start-end of each
    return ", ".join(f"{kind} {span}" for kind, span in ENTITY.findall(answer))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def protocol_request(http: Any, url: str, fn_index: int, text: str) -> float:
    """One request as the Space's page sends it: join Gradio's queue, then read the event stream until the answer
    arrives; seconds. (gradio_client waits for messages in 50 ms sleeps, which this measures without.)"""
    session = uuid.uuid4().hex[:12]
    started = time.perf_counter()
    payload = {"data": [text], "fn_index": fn_index, "session_hash": session, "event_data": None, "trigger_id": None}
    http.post(f"{url}gradio_api/queue/join", json=payload).raise_for_status()
    with http.stream("GET", f"{url}gradio_api/queue/data", params={"session_hash": session}) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:") and json.loads(line[5:]).get("msg") == "process_completed":
                return time.perf_counter() - started
    raise RuntimeError(f"{url}: the event stream ended without an answer")


FLOOR_APP = """
import sys
import gradio as gr
# The Space's shape (a text box, a label, one queued event named predict) around a function that answers at once:
# what a request costs before any model runs.
with gr.Blocks() as demo:
    text, label = gr.Textbox(), gr.Label()
    text.submit(lambda value: {"positive": 0.9, "negative": 0.1}, text, label, api_name="predict")
demo.queue(max_size=32)
demo.launch(server_port=int(sys.argv[2]))  # called as `hf-transfer demo` is: ... --port N
"""
"""The latency floor: a Gradio app like the Space's whose function does nothing."""


def _percentiles(seconds: list[float]) -> dict[str, float]:
    seconds = sorted(seconds)
    return {"p50": statistics.median(seconds), "p95": seconds[int(0.95 * (len(seconds) - 1))]}


def space_latency(folder: Path, texts: list[str], workdir: Path, env: dict[str, str], repeats: int) -> dict:
    """p50/p95 of single requests against `hf-transfer demo`, torch vs int8, alternating: through gradio_client, and
    through the queue protocol the page itself speaks (`protocol_request`)."""
    import httpx
    from gradio_client import Client

    servers, clients, urls = {}, {}, {}
    http = httpx.Client(timeout=60)
    try:
        floor_app = workdir / "floor_app.py"
        floor_app.write_text(FLOOR_APP, encoding="utf-8")
        for runtime in ("torch", "onnx-int8", "floor"):
            port = _free_port()
            command = (
                [sys.executable, str(floor_app)]
                if runtime == "floor"
                else [sys.executable, "-m", "hf_transfer", "demo", str(folder), "--runtime", runtime]
            )
            log = open(workdir / f"demo-{runtime}.log", "w", encoding="utf-8")  # noqa: SIM115 (closed with the server)
            servers[runtime] = (
                subprocess.Popen(command + ["--port", str(port)], stdout=log, stderr=log, env=env),
                log,
            )
            url = f"http://127.0.0.1:{port}/"
            for _ in range(600):
                try:
                    urllib.request.urlopen(url, timeout=1)
                    break
                except OSError:
                    time.sleep(0.5)
            clients[runtime] = Client(url, verbose=False)
            config = json.loads(urllib.request.urlopen(url + "config").read())
            fn_index = next(d["id"] for d in config["dependencies"] if d.get("api_name") == "predict")
            urls[runtime] = (url, fn_index)
            for text in texts[:3]:  # warm-up
                clients[runtime].predict(text, api_name="/predict")
                protocol_request(http, url, fn_index, text)
        blocks: dict[str, list[dict[str, float]]] = {runtime: [] for runtime in clients}
        protocol: dict[str, list[dict[str, float]]] = {runtime: [] for runtime in clients}
        for _ in range(repeats):
            for runtime, client in clients.items():
                seconds = []
                for text in texts:
                    started = time.perf_counter()
                    client.predict(text, api_name="/predict")
                    seconds.append(time.perf_counter() - started)
                blocks[runtime].append(_percentiles(seconds))
                protocol[runtime].append(_percentiles([protocol_request(http, *urls[runtime], t) for t in texts]))
    finally:
        http.close()
        for process, log in servers.values():
            process.terminate()
            process.wait(timeout=30)
            log.close()

    def summary(rows: list[dict[str, float]]) -> dict[str, Any]:
        return {
            "p50_ms": 1000 * statistics.median(b["p50"] for b in rows),
            "p95_ms": 1000 * statistics.median(b["p95"] for b in rows),
            "p50_runs_ms": [round(1000 * b["p50"], 1) for b in rows],
        }

    found: dict[str, Any] = {runtime: summary(rows) for runtime, rows in blocks.items()}
    found["protocol"] = {runtime: summary(rows) for runtime, rows in protocol.items()}
    return found | {"requests": len(texts)}


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), torch {m['torch']}, transformers {m['transformers']}, "
        f"onnxruntime {report['onnxruntime']}; load average at start {m['load_average'][0]:.2f}. "
        f"{report['repeats']} alternating repeats, medians; each figure is a whole command (start-up included).",
        "",
    ]
    parts = (("sst2", "texts/s", "accuracy"), ("conll", "sentences/s", "entity F1"), ("ants", "images/s", "accuracy"))
    for key, unit, metric in parts:
        if key not in report:
            continue
        part = report[key]
        rows = part["runtimes"]
        peer = rows["pipeline"]["per_s"]
        lines += [
            f"**{key}** ({part['inputs']} inputs; export took {part['export_s']:.1f} s)",
            "",
            f"| runtime | {unit} | × pipeline | wall s (runs) | peak RSS MB | {metric} |",
            "|---|---|---|---|---|---|",
        ]
        for name, row in rows.items():
            runs = ", ".join(f"{s:.1f}" for s in row["runs_s"])
            score = row["accuracy"] if "entity_scores" not in part else part["entity_scores"].get(name, {}).get("f1")
            shown = f"{score:.4f}" if score is not None else "(the torch weights)"
            lines.append(
                f"| {name} | {row['per_s']:.1f} | {row['per_s'] / peer:.2f}× | {row['s']:.1f} ({runs}) | "
                f"{row['peak_rss_mb']:.0f} | {shown} |"
            )
        changed = "sentences whose entities" if key == "conll" else "labels that"
        lines += ["", f"int8 {changed} differ from fp32 ONNX: {part['int8_label_changes_vs_fp32']}", ""]
        if "marginal_per_s" in part:
            rates, long = part["marginal_per_s"], part["long"]
            lines += [
                f"The same sentences {long['inputs'] // part['inputs']} times over ({long['inputs']} lines): "
                f"{unit} past start-up (extra lines / extra median seconds), × pipeline:",
                "",
                "| runtime | wall s, long file (runs) | marginal " + unit + " | × pipeline |",
                "|---|---|---|---|",
            ]
            for name, rate in rates.items():
                runs = ", ".join(f"{s:.1f}" for s in long["runtimes"][name]["runs_s"])
                row = long["runtimes"][name]
                lines.append(f"| {name} | {row['s']:.1f} ({runs}) | {rate:.1f} | {rate / rates['pipeline']:.2f}× |")
            lines += [
                "",
                f"int8 labels that differ from fp32 ONNX on the long file: {long['int8_label_changes_vs_fp32']}",
                "",
            ]
    if "space" in report:
        space = report["space"]
        lines += [
            f"**Space** (`hf-transfer demo`, {space['requests']} single requests per repeat through gradio_client)",
            "",
            "| runtime | p50 ms | p95 ms | p50 per repeat |",
            "|---|---|---|---|",
        ]
        shown = [runtime for runtime in ("torch", "onnx-int8", "floor") if runtime in space]
        for runtime in shown:
            row = space[runtime]
            lines.append(f"| {runtime} | {row['p50_ms']:.1f} | {row['p95_ms']:.1f} | {row['p50_runs_ms']} |")
        for runtime in shown if "protocol" in space else ():
            row = space["protocol"][runtime]
            lines.append(
                f"| {runtime}, the page's protocol | {row['p50_ms']:.1f} | {row['p95_ms']:.1f} | "
                f"{row['p50_runs_ms']} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sst2", type=Path, help="an SST-2 `full` output folder (default: train sst2-minilm-full)")
    parser.add_argument("--ants", type=Path, help="an ants/bees output folder (default: train ants-bees-effnet-head)")
    parser.add_argument("--conll", type=Path, help="a CoNLL-2003 output folder (default: train conll2003-minilm-full)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--requests", type=int, default=50, help="single Space requests per runtime and repeat")
    parser.add_argument("--long", type=int, default=4, help="SST-2 also as a file of its sentences K times (1: not)")
    parser.add_argument("--baseline-ref", help="also time `predict` as of this git commit (`torch, before`)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["sst2", "conll", "ants", "space"])
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    from importlib.metadata import version

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="onnx-serving-"))
    workdir.mkdir(parents=True, exist_ok=True)
    env = child_env(workdir)
    report: dict[str, Any] = {"machine": machine(), "repeats": args.repeats, "onnxruntime": version("onnxruntime")}
    baseline = None
    if args.baseline_ref:
        baseline = workdir / "baseline"
        baseline.mkdir(exist_ok=True)
        archive = subprocess.run(["git", "archive", args.baseline_ref], cwd=ROOT, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(baseline)], input=archive.stdout, check=True)
        report["baseline_ref"] = args.baseline_ref
    if "sst2" not in args.skip or "space" not in args.skip:
        sst2, export_s = prepare(args.sst2, "sst2-minilm-full.yaml", workdir, "sst2", env)
        inputs, gold = sst2_inputs(workdir)
        if "sst2" not in args.skip:
            part = throughput("text-classification", sst2, inputs, gold, workdir, env, args.repeats, baseline)
            report["sst2"] = {**part, "export_s": export_s}
            if args.long > 1:  # the same sentences K times over: what each command adds per text past its start-up
                long_inputs = workdir / f"sst2_test_x{args.long}.txt"
                long_inputs.write_text(inputs.read_text(encoding="utf-8") * args.long, encoding="utf-8")
                long = throughput(
                    "text-classification", sst2, long_inputs, gold * args.long, workdir, env, args.repeats, baseline
                )
                report["sst2"]["long"] = long
                report["sst2"]["marginal_per_s"] = marginal_rates(part, long)
        if "space" not in args.skip:
            texts = inputs.read_text(encoding="utf-8").splitlines()[: args.requests]
            report["space"] = space_latency(sst2, texts, workdir, env, args.repeats)
    if "conll" not in args.skip:
        conll, export_s = prepare(args.conll, "conll2003-minilm-full.yaml", workdir, "conll", env)
        inputs, _ = conll_inputs(workdir)
        # No `torch, before` here: token classification landed after the ONNX baseline commit.
        part = throughput("token-classification", conll, inputs, None, workdir, env, args.repeats, None)
        report["conll"] = {**part, "export_s": export_s, "entity_scores": entity_scores(conll, workdir, env)}
    if "ants" not in args.skip:
        ants, export_s = prepare(args.ants, "ants-bees-effnet-head.yaml", workdir, "ants", env)
        inputs, gold = ants_inputs(workdir)
        part = throughput("image-classification", ants, inputs, gold, workdir, env, args.repeats, baseline)
        report["ants"] = {**part, "export_s": export_s}
    report["load_average_end"] = os.getloadavg()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    text = markdown(report)
    if args.markdown:
        args.markdown.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
