"""``imgclf models``: the architectures ``imgclf train --model`` takes, with their inputs and
pretrained weights (and whether those are already in the local cache).

    imgclf models                        # digits_cnn, every torchvision and every timm classifier
    imgclf models --filter efficientnet  # names containing a string
    imgclf models --timm 'convnext*'     # only the timm models matching a pattern
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from imgclf.helpformat import DefaultsHelpFormatter
from imgclf.training.models.architectures import DIGITS_CNN, model_defaults, torchvision_names
from imgclf.usererror import run_main


def _torchvision_weights(name: str) -> list[dict[str, Any]]:
    import torch
    import torchvision

    cache = Path(torch.hub.get_dir()) / "checkpoints"
    rows = []
    for w in torchvision.models.get_model_weights(name):
        metrics = w.meta.get("_metrics", {}).get("ImageNet-1K", {})
        rows.append(
            {
                "name": w.name,
                "acc@1": metrics.get("acc@1"),
                "cached": (cache / Path(w.url).name).is_file(),
            }
        )
    return rows


def list_models(filter_text: str = "", timm_pattern: str | None = None) -> list[dict[str, Any]]:
    """One row per model: name, family, default input, weights. Every family by default;
    with `timm_pattern`, only the timm models matching it."""
    import timm

    rows: list[dict[str, Any]] = []
    names: list[tuple[str, str]] = []
    if timm_pattern is None:
        names += [(DIGITS_CNN, "ours")] + [(n, "torchvision") for n in torchvision_names()]
    names += [(f"timm:{n}", "timm") for n in timm.list_models(timm_pattern or "*")]
    tags: dict[str, list[str]] = {}
    for tagged in timm.list_pretrained():
        tags.setdefault(tagged.split(".")[0], []).append(tagged)
    for name, family in names:
        if filter_text and filter_text.lower() not in name.lower():
            continue
        defaults = model_defaults(name)
        row: dict[str, Any] = {
            "name": name,
            "family": family,
            "input_size": defaults.input_size,
            "resize_size": defaults.resize_size,
        }
        if family == "torchvision":
            row["weights"] = _torchvision_weights(name)
        elif family == "timm":
            from imgclf.training.models.weights import PACKAGE_WEIGHTS

            found = tags.get(name.removeprefix("timm:"), [])
            row["weights"] = [{"name": "pretrained", "tags": found}] if found else []
            row["weights"] += [
                {"name": package, "package": True}
                for package, (arch, _) in PACKAGE_WEIGHTS.items()
                if arch == name.removeprefix("timm:")
            ]
        else:
            row["weights"] = []
        rows.append(row)
    return rows


def _weights_text(row: dict[str, Any]) -> str:
    if row["family"] == "ours":
        return "none (train from scratch, or --weights FILE)"
    if row["family"] == "timm":
        names = [w["name"] for w in row["weights"]]
        return (
            ", ".join(f"{n} (installed package)" if n != "pretrained" else n for n in names) or "-"
        )
    parts = []
    for w in row["weights"]:
        acc = f" {w['acc@1']:.1f}%" if w["acc@1"] else ""
        parts.append(f"{w['name']}{acc}{' (cached)' if w['cached'] else ''}")
    return ", ".join(parts)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imgclf models",
        description="List the architectures `imgclf train --model` takes.",
        add_help=add_help,
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument("--filter", default="", help="only names containing this text")
    parser.add_argument(
        "--timm",
        nargs="?",
        const="*",
        metavar="PATTERN",
        help="list only the timm models matching PATTERN (e.g. 'convnext*')",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    return parser


def run(argv: list[str] | None = None) -> int:
    """The command; a failure raises."""
    args = get_args_parser().parse_args(argv)
    rows = list_models(args.filter, args.timm)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max((len(r["name"]) for r in rows), default=10)
    print(f"{'model':<{width}}  {'family':<11}  {'input':>5}  weights (--weights)")
    for r in rows:
        print(f"{r['name']:<{width}}  {r['family']:<11}  {r['input_size']:>5}  {_weights_text(r)}")
    print(f"\n{len(rows)} models; imgclf train --model NAME [--weights W]")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The command as `imgclf models` runs it: a failure is a line and an exit status."""
    return run_main("imgclf models", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
