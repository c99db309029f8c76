"""`python -m imgclf.client.bench ...`: the same as `imgclf bench ...`."""

from __future__ import annotations

import argparse
import sys

from imgclf.client.bench.cli import DESCRIPTION, add_arguments, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="imgclf bench", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
