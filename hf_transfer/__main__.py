"""`python -m hf_transfer` and `accelerate launch -m hf_transfer`.

Commands:
    train RECIPE [key.path=value ...] [--output-dir DIR] [--overwrite | --resume]
    advise RECIPE [key.path=value ...] [--output-dir DIR] [--sample N] [--write-recipe PATH] [--pilot]
    compare RECIPE [key.path=value ...] [--strategies head,partial:2,lora,full] [--output-dir DIR] [--overwrite]
    evaluate OUTPUT_DIR [--split test | --file more.csv] [--runtime torch|onnx|onnx-int8]
    predict OUTPUT_DIR "text" ... | IMAGE_FILE ... [--file in.csv] [--json] [--runtime torch|onnx|onnx-int8]
    export OUTPUT_DIR [--int8] [--inputs FILE]
    publish OUTPUT_DIR --repo-id me/name [--space me/name-demo] [--private] [--merge] [--exist-ok]
    demo OUTPUT_DIR_OR_REPO [--runtime torch|onnx|onnx-int8]
    recipes | schema | doctor
"""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
