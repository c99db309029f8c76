"""``imgclf launch``: torchrun, with a one-line error when the rendezvous cannot form.

    imgclf launch --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d \\
        --rdzv-endpoint HOST:29400 --rdzv-id run1 --no-python imgclf train ...

Takes exactly torchrun's arguments (``torch.distributed.run``) and runs it. torchrun itself
reports a rendezvous that times out or cannot be reached with a traceback that ends in the
exception's name; this prints ``launch failed: ...`` naming the endpoint, backend and run id
instead, and exits 1. A failing training process is reported as torchrun reports it.
"""

from __future__ import annotations

import sys

from torch.distributed.elastic.rendezvous.api import RendezvousError, RendezvousGracefulExitError
from torch.distributed.run import parse_args
from torch.distributed.run import run as torchrun


def describe(exc: RendezvousError, backend: str, endpoint: str, run_id: str) -> str:
    """The one-line report of a rendezvous that did not form."""
    detail = (str(exc).strip().splitlines() or [""])[0]
    cause = type(exc).__name__ + (f": {detail}" if detail else "")
    return (
        f"launch failed: the {backend} rendezvous at {endpoint or '(no endpoint)'} "
        f"(run id {run_id}) did not form ({cause}); every node needs the same --rdzv-endpoint, "
        "--rdzv-id and --nnodes, and must reach the endpoint"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        torchrun(args)
    except RendezvousGracefulExitError:
        return 0
    except RendezvousError as exc:
        print(describe(exc, args.rdzv_backend, args.rdzv_endpoint, args.rdzv_id), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
