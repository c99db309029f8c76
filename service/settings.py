"""Typed server settings: environment (`IMGCLF_*`), then CLI flags on top.

Each field's docstring is its documentation: `imgclf serve --help` and the README's
configuration table both come from here.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from imgclf.budget import default_message_limit
from imgclf.runtime.cpuquota import cpus


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="IMGCLF_", use_attribute_docstrings=True, extra="ignore"
    )

    model_repository: Path = Path("models")
    """Model repository: models/<name>/<version>/model.onnx."""
    host: str = "127.0.0.1"
    """Address the gRPC server binds (0.0.0.0 for every interface)."""
    grpc_port: int = Field(8001, ge=0, le=65535)
    """gRPC port (0 picks a free one; the chosen port is logged)."""
    http: bool = True
    """Serve the Open Inference Protocol over HTTP/REST (and the plain /v1 image endpoint)."""
    http_host: str | None = None
    """Address the HTTP server binds (unset: the gRPC host)."""
    http_port: int = Field(8000, ge=0, le=65535)
    """HTTP/REST port (0 picks a free one; the chosen port is logged)."""
    http_read_timeout_s: float = Field(30.0, gt=0)
    """HTTP: longest time a request body may take to arrive (slower senders get 408)."""
    http_ui: bool = True
    """Serve the page at / of the HTTP port: pick a model, drop a photo, see the top classes
    and their maps over it (static files, no data; every API call it makes needs the token)."""
    metrics_host: str | None = None
    """Address the metrics endpoint binds (unset: the gRPC host)."""
    metrics_port: int = Field(8002, ge=0, le=65535)
    """Port of the Prometheus /metrics endpoint (0 picks a free one)."""
    tls_cert_file: Path | None = None
    """PEM certificate (chain) of the server; with its key file, the gRPC and HTTP ports
    speak TLS."""
    tls_key_file: Path | None = None
    """PEM private key of the server certificate."""
    tls_client_ca_file: Path | None = None
    """PEM CA bundle: when set, clients must present a certificate it signed (mutual TLS)."""
    auth_token: str | None = None
    """Bearer token every call must carry (authorization: Bearer ...); health is exempt.
    Prefer the token file or the environment over the command line."""
    auth_token_file: Path | None = None
    """File holding the bearer token (wins over the token setting)."""
    default_model: str = ""
    """Model used when a request names none (default: the only model, if one is loaded)."""
    model_control_mode: Literal["none", "poll", "explicit"] = "none"
    """none: load every model at start; poll: also pick up repository changes; explicit: load
    the models named by load_model, then load/unload by RPC."""
    poll_interval_s: float = Field(5.0, gt=0)
    """Seconds between repository polls (poll mode)."""
    strict_readiness: bool = True
    """Report ready only when every model that should serve has a ready version (off: when
    at least one serves)."""
    load_model: list[str] = Field(default_factory=list)
    """Explicit mode: models to load at start (repeatable; * for all)."""
    providers: Literal["auto", "cpu", "cuda", "tensorrt"] = "auto"
    """Execution provider: auto (CUDA when really available, else CPU), cpu, cuda or
    tensorrt (cuda and tensorrt refuse to start without a working GPU)."""
    require_gpu: bool = False
    """Refuse to load a model unless CUDA really runs it (no silent CPU fallback)."""
    gpu_id: int = Field(0, ge=0)
    """CUDA device id."""
    tensorrt_cache_dir: Path | None = None
    """TensorRT engine cache root (one folder per model hash + runtime versions); unset:
    engines are rebuilt at every start."""
    allow_spinning: bool = False
    """Let idle ONNX Runtime CPU threads spin (lower latency under load; idle instances
    burn cores)."""
    io_binding: bool = True
    """On CUDA/TensorRT, run batches through an ONNX Runtime IOBinding, with input and
    output buffers allocated once per batch size bucket on the GPU."""
    cuda_graphs: bool = False
    """On CUDA (with IO binding), capture one CUDA graph per batch size bucket at load and
    replay it for every batch (each checked against a plain run at load); needs every node
    of the model on the CUDA provider."""
    instances: int = Field(0, ge=0)
    """ONNX Runtime sessions per model, each running one batch at a time, the cores divided
    among them (0: auto, one single-threaded session per core on CPU, one session on a
    GPU)."""
    share_weights: bool = True
    """On CPU, every session of a model version takes one copy of its optimised weights and
    allocates from one memory arena for the whole process, instead of each session holding
    its own (the same outputs bit for bit; off: one copy per session, the former design)."""
    solo_session: bool = True
    """On CPU, one more session per model whose intra-op threads span every core; it runs a
    batch that is all the work there is (nothing else running or waiting), so a lone request
    gets every core while concurrent ones run one per instance."""
    solo_spinning: bool = True
    """Let the solo session's threads spin between operators and briefly after a run (a
    lone request's latency; the session is idle under load)."""
    intra_op_threads: int = Field(0, ge=0)
    """ONNX Runtime intra-op threads per session (0: the cores divided among the sessions)."""
    preprocess_threads: int = Field(0, ge=0)
    """Threads decoding and preprocessing images for GPU models (0: one per core); on CPU
    the worker that runs an image decodes it, on the core that then infers it."""
    max_batch_size: int = Field(0, ge=0)
    """Largest batch the dynamic batcher forms (a model's config.json may override); 0: auto,
    8 on GPU, and on CPU 8 for models that run an image in under 5 ms, else 4 (timed at
    load)."""
    max_queue_delay_ms: float = Field(0.0, ge=0)
    """How long the batcher waits for more requests once it has one (0: none; batches still
    form from what queues up while every instance is busy)."""
    max_queue_size: int = Field(256, ge=1)
    """Images waiting per model beyond which requests get RESOURCE_EXHAUSTED."""
    default_timeout_ms: float = Field(0.0, ge=0)
    """Queue timeout for requests that set none (0: none); expired requests are dropped
    before inference with DEADLINE_EXCEEDED."""
    default_top_k: int = Field(5, ge=1)
    """Classes returned per image when a request sets no top_k."""
    max_top_k: int = Field(1000, ge=1)
    """Largest top_k a request may ask for."""
    max_explain_classes: int = Field(5, ge=1)
    """Most class activation maps one image of a request may ask for (explain)."""
    max_images_per_request: int = Field(64, ge=1)
    """Most images one Classify request may carry."""
    jpeg_draft: bool = True
    """Decode large JPEGs at 1/2, 1/4 or 1/8 scale in the DCT domain when that still covers
    twice the model's resize (much faster; not bit-identical to a full decode)."""
    max_pixels: int = Field(40_000_000, ge=1)
    """Largest image (width x height) accepted, checked before decoding."""
    memory_budget_bytes: int = Field(1024 * 1024 * 1024, ge=1024 * 1024)
    """Memory that requests may hold in flight (messages being received and served, images
    being decoded); beyond it, requests get RESOURCE_EXHAUSTED at once (SECURITY.md)."""
    max_message_bytes: int = Field(0, ge=0)
    """Largest gRPC message received or sent, and largest HTTP request body (0: the memory
    budget / 64, so that 16 messages of the largest size fit in the budget at once, each held
    up to four times)."""
    pre_drain_delay_s: float = Field(0.0, ge=0)
    """On SIGTERM/SIGINT: keep serving this long after readiness turns NOT_SERVING, so load
    balancers stop routing here first."""
    grace_period_s: float = Field(30.0, ge=0)
    """On SIGTERM/SIGINT: how long in-flight requests may take to finish."""
    max_connection_idle_s: float = Field(300.0, ge=0)
    """Close (HTTP/2 GOAWAY) a client connection that has had no call open for this long; 0:
    never."""
    warmup: bool = True
    """Run each model once per batch size before reporting SERVING."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Log level."""

    @model_validator(mode="after")
    def _tls_pairs(self) -> ServerSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("--tls-cert-file and --tls-key-file go together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError(
                "--tls-client-ca-file (mutual TLS) needs --tls-cert-file/--tls-key-file"
            )
        return self

    @property
    def preprocess_workers(self) -> int:
        return self.preprocess_threads or cpus()

    @property
    def http_bind(self) -> str:
        return self.http_host or self.host

    @property
    def message_limit(self) -> int:
        """The effective --max-message-bytes."""
        return self.max_message_bytes or default_message_limit(self.memory_budget_bytes)

    @property
    def metrics_bind(self) -> str:
        return self.metrics_host or self.host


def describe_field(model: type[BaseModel], name: str) -> tuple[str, str]:
    """A pydantic field's one-line description (its docstring) and its default, as text."""
    info = model.model_fields[name]
    default = info.get_default(call_default_factory=True)
    if isinstance(default, BaseModel):
        default = default.model_dump(exclude_defaults=True) or ""
    text = "" if default in (None, "", []) else str(default)
    return " ".join((info.description or "").split()), text


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _truth(text: str) -> bool:
    """A boolean flag's value, spelled as the environment spells it."""
    low = text.lower()
    if low in ("true", "1", "yes", "on"):
        return True
    if low in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _arg_type(annotation: Any) -> tuple[Any, list[str] | None]:
    if get_origin(annotation) is list:
        return annotation, None
    if get_origin(annotation) is Literal:
        return str, [str(a) for a in get_args(annotation)]
    args = [a for a in get_args(annotation) if a is not type(None)]
    base = args[0] if args else annotation
    return base, None


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """One CLI flag per settings field, documented by the field's docstring."""
    group = parser.add_argument_group("server settings (also env IMGCLF_<NAME>)")
    for name, info in ServerSettings.model_fields.items():
        kind, choices = _arg_type(info.annotation)
        description, default = describe_field(ServerSettings, name)
        help_text = f"{description} (default: {default or 'unset'})"
        if kind is bool:  # --x, --x true|false (as in the environment), --no-x
            group.add_argument(
                _flag(name), dest=name, nargs="?", const=True, type=_truth, default=None,
                metavar="true|false", help=help_text,
            )  # fmt: skip
            group.add_argument(
                "--no-" + _flag(name)[2:], dest=name, action="store_false", default=None,
                help=f"the same as {_flag(name)} false",
            )  # fmt: skip
        elif get_origin(kind) is list:
            group.add_argument(_flag(name), dest=name, action="append", help=help_text)
        else:
            group.add_argument(
                _flag(name), dest=name, type=kind, choices=choices, help=help_text, default=None
            )


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    """Environment first, then every flag given on the command line."""
    given = {
        name: getattr(args, name)
        for name in ServerSettings.model_fields
        if getattr(args, name, None) is not None
    }
    return ServerSettings(**given)


def settings_table() -> str:
    """The configuration reference as a Markdown table (the README embeds it verbatim)."""
    rows = ["| flag | environment | default | meaning |", "|---|---|---|---|"]
    for name in ServerSettings.model_fields:
        description, default = describe_field(ServerSettings, name)
        shown = f"`{default}`" if default else "(unset)"
        rows.append(f"| `{_flag(name)}` | `IMGCLF_{name.upper()}` | {shown} | {description} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(settings_table())
