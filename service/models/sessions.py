"""The ONNX Runtime sessions of one model version: their execution options (config, settings
and the instance's share of the cores), the instances and the solo session, and which file
of the version folder they run (imgclf.models.variants)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from imgclf.models.repository import ModelConfig
from imgclf.models.variants import Choice, choose_variant
from imgclf.repolayout import ModelEntry
from imgclf.runtime.cpuquota import cpus
from imgclf.runtime.engine import Engine, share_weights
from imgclf.runtime.options import ExecutionOptions
from imgclf.runtime.providers import CPU, choose_providers
from imgclf.runtime.sharedweights import SharedWeights
from imgclf.settings import ServerSettings

PROVIDER_OF_KIND = {"cpu": "cpu", "gpu": "cuda"}


@dataclass
class Engines:
    """A model version's ONNX Runtime sessions."""

    instances: list[Engine]
    """One batch at a time each."""
    solo: Engine | None = None
    """CPU only: a session over every core for a batch that is all the work there is."""
    shared: SharedWeights | None = None
    """CPU only (unless `share_weights` is off): the weights every session above takes."""

    @property
    def all(self) -> list[Engine]:
        return self.instances + ([self.solo] if self.solo is not None else [])


def execution_options(
    config: ModelConfig, settings: ServerSettings, instance: int, instances: int
) -> ExecutionOptions:
    """The ONNX Runtime options of one of a model's `instances`."""
    providers = config.providers or PROVIDER_OF_KIND.get(config.instance_kind)
    if providers is None:
        providers = settings.providers
    if settings.require_gpu and providers in ("auto", "cpu"):
        providers = "cuda"
    gpus = config.gpus or [settings.gpu_id]
    threads = config.intra_op_threads
    if threads is None:
        threads = settings.intra_op_threads or max(1, cpus() // instances)
    extra = {
        key: value
        for key in ("cudnn_conv_algo_search", "gpu_mem_limit_bytes", "arena_extend_strategy")
        if (value := getattr(config, key)) is not None
    }
    return ExecutionOptions(
        providers=providers,
        gpu_id=gpus[instance % len(gpus)],
        intra_op_threads=threads,
        tensorrt_fp16=config.tensorrt_fp16,
        tensorrt_cache_dir=settings.tensorrt_cache_dir,
        allow_spinning=settings.allow_spinning,
        io_binding=settings.io_binding,
        cuda_graphs=settings.cuda_graphs if config.cuda_graphs is None else config.cuda_graphs,
        **extra,
    )


def create_engines(
    path: Path, config: ModelConfig, settings: ServerSettings, feature: str | None = None
) -> Engines:
    """The model's instances (the solo session comes later in load_model: see
    `wants_solo`); `feature`: the extra output of the graph at `path` (Engine).

    Configured (`instances` N): N sessions, the cores divided among them. Auto: on a GPU one
    session; on CPU one single-threaded session per core, which the limit measurements show
    gives the most images per second under concurrent load (docs/performance.md). (A GPU
    session's CPU threads only run the few nodes left on the CPU.)"""
    count = config.instances or settings.instances
    options = execution_options(config, settings, 0, count or cpus())
    shared = share_weights(path, options) if settings.share_weights else None
    first = Engine(path, options, shared, feature)
    if not count:
        count = cpus() if first.info.provider == CPU else 1
    rest = [
        Engine(path, execution_options(config, settings, i, count), shared, feature)
        for i in range(1, count)
    ]
    return Engines([first, *rest], shared=shared)


def solo_options(config: ModelConfig, settings: ServerSettings) -> ExecutionOptions:
    """The solo session's options: one intra-op thread per core, spinning as configured."""
    options = execution_options(config, settings, 0, 1)
    return dataclasses.replace(
        options,
        intra_op_threads=cpus(),
        allow_spinning=options.allow_spinning or settings.solo_spinning,
    )


def wants_solo(engine: Engine, settings: ServerSettings) -> bool:
    """Whether a solo session could pay: on CPU with more than one core, unless an instance
    already spans every core. It is then added for models slow enough that intra-op threads
    pay (BATCHING_PAYS_BELOW_S per image or more on one instance); it runs a request that
    arrives alone at the latency of every core. `engine` is the model's first instance."""
    return (
        settings.solo_session
        and engine.info.provider == CPU
        and engine.options.intra_op_threads < cpus()
    )


def served_variant(entry: ModelEntry, config: ModelConfig, settings: ServerSettings) -> Choice:
    """Which file of the version folder to serve, for the provider the first instance will
    request (imgclf.models.variants)."""
    requested, _ = choose_providers(execution_options(config, settings, 0, 1))
    first = requested[0] if isinstance(requested[0], str) else requested[0][0]
    return choose_variant(entry.path.parent, config.precision, first)
