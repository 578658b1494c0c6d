"""The `hf-transfer` command line: argument parsing only; each subcommand calls one function of the package."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from pathlib import Path
from typing import Any

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"


def _add_recipe_arguments(parser: argparse.ArgumentParser, output_help: str = "overrides training.output_dir") -> None:
    parser.add_argument("recipe", help="recipe YAML file")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. training.lr=3e-5 strategy.kind=lora")
    parser.add_argument("--output-dir", help=output_help)


def _add_runtime_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--runtime",
        choices=("torch", "onnx", "onnx-int8"),
        help="what runs the model (default: the fastest ONNX export in the folder whose parity passed, else torch)",
    )


def _add_trust_argument(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help=help
        or "run the model's own code (auto_map) even when it is not hf_transfer's own architecture, byte for byte",
    )


def cmd_train(args: argparse.Namespace) -> int:
    from .ownership import check_output_location
    from .recipe import load_recipe
    from .train import install_sigterm_as_interrupt, train

    recipe = load_recipe(args.recipe, args.overrides, args.output_dir)
    check_output_location(Path(recipe.training.output_dir), recipe, args.recipe)  # train() cannot see the file
    install_sigterm_as_interrupt()
    out = train(recipe, overwrite=args.overwrite, resume=args.resume)
    if recipe.hub is not None:
        from accelerate import PartialState

        from .hub import publish

        result = publish(
            out,
            recipe.hub.repo_id,
            space=recipe.hub.space,
            private=recipe.hub.private,
            exist_ok=True,
            trust_remote_code=recipe.trust_remote_code,  # the recipe being run, not one read back from a folder
            is_main_process=PartialState().is_main_process,
        )
        if result is not None:
            print(f"published {result.repo_url}")
    from accelerate import PartialState

    if PartialState().is_main_process:
        metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
        summary = {split: values for split, values in metrics.items() if split != "train"}
        print(json.dumps({"output_dir": str(out), **summary}, indent=2))
    return 0


def cmd_advise(args: argparse.Namespace) -> int:
    from .advise import advise

    report = advise(
        args.recipe,
        args.overrides,
        output_dir=args.output_dir,
        sample=args.sample,
        write_recipe=args.write_recipe,
        pilot=args.pilot,
    )
    if report is not None:  # the main process
        rec = report["recommendation"]
        print(f"recommended: {rec['spec']}")
        for reason in rec["reasons"]:
            print(f"  - {reason}")
        written = f"; recipe: {args.write_recipe}" if args.write_recipe else ""
        print(f"report: {Path(report['output_dir']) / 'advise.md'}{written}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare, winner

    results = compare(
        args.recipe, args.strategies, args.overrides, output_dir=args.output_dir, overwrite=args.overwrite
    )
    if results is not None:  # the main process
        keys = ("strategy", "accuracy", "macro_f1", "trainable_params", "wall_s", "peak_mem_mb")
        print(
            json.dumps(
                {"winner": winner(results)["strategy"], "results": [{k: r[k] for k in keys} for r in results]},
                indent=2,
            )
        )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .inference import evaluate_run

    scores = evaluate_run(
        args.output_dir,
        split=args.split,
        file=args.file,
        data_source=args.data_source,
        trust_remote_code=args.trust_remote_code,
        runtime=args.runtime,
    )
    print(json.dumps(scores, indent=2))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .onnx_text import load_onnx_text_run
    from .streaming import file_inputs, predict_stream, write_results

    # A text task's verified ONNX export answers without importing torch or transformers (seconds sooner).
    run: Any = load_onnx_text_run(args.output_dir, runtime=args.runtime, trust_remote_code=args.trust_remote_code)
    if run is None:
        from transformers.utils import logging as transformers_logging

        from .inference import load_run

        transformers_logging.disable_progress_bar()  # the output is the predictions, not a loading bar
        run = load_run(args.output_dir, trust_remote_code=args.trust_remote_code, runtime=args.runtime)
    inputs, total = list(args.texts), len(args.texts)
    if args.file:
        streamed, count = file_inputs(run, Path(args.file))
        inputs, total = itertools.chain(inputs, streamed), total + count
    if not total:
        print(f"error: give {run.input_noun} as arguments or --file", file=sys.stderr)
        return 2
    write_results(run, predict_stream(run, inputs, total), args.json, sys.stdout)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .onnx_export import export, summary

    manifest = export(args.output_dir, int8=args.int8, inputs_file=args.inputs)
    print(json.dumps(summary(manifest), indent=2))
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    folder = Path(args.dir) if args.dir else RECIPES_DIR
    if not folder.is_dir():
        print(f"no recipes folder at {folder} (pass --dir)", file=sys.stderr)
        return 1
    import yaml

    for path in sorted(folder.glob("*.yaml")):
        tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        strategy = (tree.get("strategy") or {}).get("kind", "lora")
        source = (tree.get("data") or {}).get("source", "?")
        print(f"{path.name:34} {strategy:8} {tree.get('model', '?'):45} {source}")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from .recipe import recipe_json_schema

    text = json.dumps(recipe_json_schema(), indent=2)
    if args.write:
        Path(args.write).write_text(text + "\n", encoding="utf-8")
    else:
        print(text)
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import report

    text, healthy = report()
    print(text)
    return 0 if healthy else 1


def cmd_publish(args: argparse.Namespace) -> int:
    from .hub import publish

    result = publish(
        Path(args.output_dir),
        args.repo_id,
        space=args.space,
        private=args.private,
        merge=args.merge,
        exist_ok=args.exist_ok,
        space_secret_token_name=args.space_token_secret,
        trust_remote_code=args.trust_remote_code,
    )
    if result.commit_oid is None:
        print(f"{result.repo_url}: already up to date (nothing changed)")
    else:
        print(f"{result.repo_url}: committed {result.commit_oid[:10]} ({result.bytes_uploaded:,} bytes)")
    if result.space_url:
        print(f"Space: {result.space_url}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .space import launch_demo

    launch_demo(
        args.model,
        host=args.host,
        port=args.port,
        share=args.share,
        trust_remote_code=args.trust_remote_code,
        runtime=args.runtime,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-transfer",
        description="Transfer learning recipes for the Hugging Face ecosystem. "
        "Training runs under `accelerate launch -m hf_transfer train ...` too.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a recipe and write its output folder")
    _add_recipe_arguments(train)
    existing = train.add_mutually_exclusive_group()  # replacing a run and continuing it contradict each other
    existing.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier hf_transfer run in the output folder (only its files; a folder with others refuses)",
    )
    existing.add_argument(
        "--resume", action="store_true", help="continue from the newest checkpoint in the output folder"
    )
    train.set_defaults(run=cmd_train)

    advise = commands.add_parser(
        "advise", help="measure the data and probe each layer, then recommend a strategy (writes advise.json/.md)"
    )
    _add_recipe_arguments(advise, "where advise.json and advise.md go (default: beside the recipe's output folder)")
    advise.add_argument("--sample", type=int, default=2000, help="training rows to measure and probe (default 2000)")
    advise.add_argument("--write-recipe", metavar="PATH", help="write the recommended recipe to this YAML file")
    advise.add_argument(
        "--pilot", action="store_true", help="also train each candidate strategy for one epoch on the sample"
    )
    advise.set_defaults(run=cmd_advise)

    compare = commands.add_parser(
        "compare", help="train several strategies under one budget; write results.json/.md and plots"
    )
    _add_recipe_arguments(
        compare, "the comparison folder, one run folder per strategy in it (default: <output>-compare)"
    )
    compare.add_argument(
        "--strategies",
        default="head,partial:2,lora,full",
        help="comma-separated: head, partial:N, lora, lora:R, full, each optionally @LR (default: %(default)s)",
    )
    compare.add_argument("--overwrite", action="store_true", help="replace the runs of an earlier comparison")
    compare.set_defaults(run=cmd_compare)

    _add_folder_commands(commands)
    return parser


def _add_folder_commands(commands: Any) -> None:
    """The commands that start from a finished output folder, and the ones that only print."""
    evaluate = commands.add_parser("evaluate", help="score a trained output folder on a split or a labelled file")
    evaluate.add_argument("output_dir")
    evaluate.add_argument("--split", default="test", help="split of the recipe's data (default: test)")
    sources = evaluate.add_mutually_exclusive_group()
    sources.add_argument("--file", help="a labelled csv/tsv/json file with the recipe's columns")
    sources.add_argument(
        "--data-source",
        metavar="SPEC",
        help="data.source to score instead of the recipe's: a Hub ID, a folder, or a module:function loader "
        "(a loader named only by the folder's own recipe is never imported)",
    )
    _add_trust_argument(evaluate)
    _add_runtime_argument(evaluate)
    evaluate.set_defaults(run=cmd_evaluate)

    predict = commands.add_parser("predict", help="predict labels for texts or images with a trained output folder")
    predict.add_argument("output_dir")
    predict.add_argument("texts", nargs="*", help="texts to classify (image files, for an image model)")
    predict.add_argument(
        "--file", help="a .txt file (one text or image path per line) or a table with the text/image column"
    )
    predict.add_argument("--json", action="store_true", help='print [{"label": ..., "scores": {...}}, ...]')
    _add_trust_argument(predict)
    _add_runtime_argument(predict)
    predict.set_defaults(run=cmd_predict)

    export = commands.add_parser("export", help="export an output folder's model to ONNX (onnx/), optionally int8")
    export.add_argument("output_dir")
    export.add_argument(
        "--int8",
        action="store_true",
        help="also write an int8 model (dynamic quantisation; a classifier's answers within int8's measured error of "
        "another answer are answered again by the fp32 model)",
    )
    export.add_argument(
        "--inputs",
        help="inputs to trace and check parity with (a .txt or table, as predict --file reads), besides up to 512 "
        "rows of the recipe's validation split",
    )
    export.set_defaults(run=cmd_export)

    recipes = commands.add_parser("recipes", help="list the bundled recipes")
    recipes.add_argument("--dir", help="another folder of recipes")
    recipes.set_defaults(run=cmd_recipes)

    schema = commands.add_parser("schema", help="print the recipe JSON Schema (for editor validation)")
    schema.add_argument("--write", help="write it to this file instead")
    schema.set_defaults(run=cmd_schema)

    doctor = commands.add_parser("doctor", help="versions, offline mirrors, and a foreign `hf_transfer` install")
    doctor.set_defaults(run=cmd_doctor)

    publish = commands.add_parser("publish", help="push an output folder to the Hub (+ a Gradio Space)")
    publish.add_argument("output_dir")
    publish.add_argument("--repo-id", required=True, help="namespace/name of the model repo")
    publish.add_argument("--space", help="namespace/name of a Gradio Space to create that serves the model")
    publish.add_argument("--private", action="store_true")
    publish.add_argument("--merge", action="store_true", help="LoRA runs: push the merged model, not the adapter")
    publish.add_argument("--exist-ok", action="store_true", help="update the repo if it already exists")
    publish.add_argument(
        "--space-token-secret",
        help="name of an environment variable holding a read token, set as a secret on a public Space "
        "so it can load a private model",
    )
    _add_trust_argument(publish, "let the Space run the model's own code when it is not hf_transfer's own")
    publish.set_defaults(run=cmd_publish)

    demo = commands.add_parser("demo", help="run the Space app locally on an output folder or a Hub repo")
    demo.add_argument("model", help="output folder or Hub repo ID")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int)
    demo.add_argument("--share", action="store_true", help="ask Gradio for a public share link")
    _add_trust_argument(demo, "run a Hub repo's own model code, or a folder's that is not hf_transfer's own")
    _add_runtime_argument(demo)
    demo.set_defaults(run=cmd_demo)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `hf-transfer` and `python -m hf_transfer`; errors print one clear line, not a traceback."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `predict DIR --json "a text"`: argparse fills the texts list before the first option and calls what follows it
    # unrecognised; they are inputs too, in the order given.
    if extra and isinstance(getattr(args, "texts", None), list) and not any(e.startswith("-") for e in extra):
        args.texts.extend(extra)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from .errors import USER_ERRORS

    try:
        return args.run(args)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        _end_process_group()


def _end_process_group() -> None:
    """A launched command (train, compare, advise) ends its process group once, after every training in it."""
    if "accelerate" not in sys.modules:
        return
    from accelerate.state import PartialState

    if PartialState._shared_state:  # only when a run set the state up; never create it just to tear it down
        PartialState().destroy_process_group()
