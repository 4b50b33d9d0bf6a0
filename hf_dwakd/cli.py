"""`hf-dwakd`, the command line: one sub-command per entry of `COMMANDS`.

    hf-dwakd train --config recipes/qwen1.5-1.8b_to_gpt2.yaml [--any_field VALUE ...]
    accelerate launch --config_file recipes/accelerate/deepspeed_zero3.yaml -m hf_dwakd.cli train --config ...
    hf-dwakd evaluate --model_name_or_path DIR --data_dir DIR --output_dir DIR

Each command lives in its own module, imported only when it runs, as a function that takes the command's own
arguments (`argv`); adding a command is one line here.
"""

import argparse
import importlib

# name: ("module:function(argv)", what it does)
COMMANDS = {
    "train": ("hf_dwakd.scripts.train:run", "distil a student from a teacher (a YAML recipe and/or flags)"),
    "evaluate": ("hf_dwakd.evaluation.command:main", "ROUGE-L of a model on Dolly, Self-Instruct, Vicuna and S-NI"),
    "inspect": ("hf_dwakd.inspection.command:main", "draw how a student's tokens meet the teacher's on one example"),
    "cache-teacher": ("hf_dwakd.teacher_cache.command:main", "run the teacher once and store its states for `train`"),
}


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="hf-dwakd",
        description="Cross-tokenizer knowledge distillation with DWA-KD (arXiv 2602.21669).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands (see `hf-dwakd COMMAND --help`):\n"
        + "\n".join(f"  {name:13} {text}" for name, (_, text) in COMMANDS.items()),
    )
    parser.add_argument("command", choices=list(COMMANDS), help=" or ".join(COMMANDS))
    parser.add_argument("arguments", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parsed = parser.parse_args(argv)
    module, function = COMMANDS[parsed.command][0].split(":")
    getattr(importlib.import_module(module), function)(parsed.arguments)


if __name__ == "__main__":
    main()
