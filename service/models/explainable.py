"""Whether a model version can explain its answers (class activation maps), decided at load.

`inspect_head` reads the served file's graph (imgclf.models.cam.find_head): a head of global
pooling + one linear layer gives the feature tensor and the linear layer's weights; any other
head, or `explain: false` in the model's config, gives the reason a request for maps is
refused. `graph_to_serve` is the file the sessions are created from: for an explaining model
the graph with the feature tensor as an extra output, written once to a temporary folder that
lives until the version's sessions exist (so shared weights, providers and the TensorRT cache
work on it as on the file itself); plain runs fetch the model's output alone.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from imgclf.models import cam
from imgclf.models.repository import ModelConfig

log = logging.getLogger(__name__)

EXPLAINED_FILE = "model.explained.onnx"


@dataclass(frozen=True)
class Explaining:
    """What a loaded version knows about explaining its answers."""

    head: cam.ActivationHead | None
    """The feature tensor and linear layer; None: the version does not explain."""
    why_not: str = ""
    """Why it does not (for the refusal and the load log line); empty when it does."""

    @property
    def feature(self) -> str | None:
        return self.head.feature if self.head is not None else None


def inspect_head(path: Path, config: ModelConfig) -> Explaining:
    """The head of the model file at `path`, or why its answers cannot be explained."""
    if not config.explain:
        return Explaining(None, "class activation maps are turned off in its config.json")
    try:
        return Explaining(cam.find_head(path.read_bytes()))
    except cam.HeadNotSupported as exc:
        return Explaining(None, str(exc))
    except Exception as exc:  # e.g. a graph past protobuf's 2 GB: not read here
        return Explaining(None, f"its graph could not be read for its head: {exc}")


@contextlib.contextmanager
def graph_to_serve(path: Path, explaining: Explaining) -> Iterator[Path]:
    """The model file to create the sessions from: `path` itself, or for an explaining model
    the graph that also outputs the feature tensor (removed on leaving)."""
    if explaining.head is None:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="imgclf-explained-") as folder:
        edited = Path(folder) / EXPLAINED_FILE
        edited.write_bytes(cam.with_output(path.read_bytes(), explaining.head.feature))
        yield edited
