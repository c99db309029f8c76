"""Model lifecycle: which versions are loaded, loading/unloading them, polling the repository.

Control modes (as in Triton):
- none: load every model at start; the repository is not watched; load/unload RPCs refused.
- poll: like none, then re-read the repository every `poll_interval_s` and apply changes.
- explicit: load only `--load-model` names at start (`*` for all); load/unload by RPC.

A new version is loaded and warmed up off the event loop before it takes traffic. A version
leaving service stops taking new requests at once, and is closed only after the requests that
hold it have finished (ServedModel.use / retire). When none of the wanted versions loads, the
versions already serving stay in service, and the failure is logged and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from service.cores import Cores
from service.errors import ModelControlError, ModelNotFound, ModelNotReady
from service.metrics import Metrics
from service.model import ServedModel, load_model
from service.repository import ModelConfig, config_fingerprint, model_names, read_model_config
from service.repository import versions as repo_versions
from service.settings import ServerSettings

log = logging.getLogger(__name__)

STATES = ("LOADING", "READY", "UNAVAILABLE", "FAILED")


@dataclass
class VersionStatus:
    state: str
    reason: str = ""


class ModelManager:
    def __init__(
        self,
        settings: ServerSettings,
        metrics: Metrics,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.root = settings.model_repository
        self.mode = settings.model_control_mode
        self._on_change = on_change
        self.cores = Cores()
        """The CPU work of every model (solo runs start only when nothing else works)."""
        self._serving: dict[str, dict[int, ServedModel]] = {}
        self.status: dict[str, dict[int, VersionStatus]] = {}
        self._wanted: set[str] = set()
        """Models that should be serving (readiness is judged against these)."""
        self._failed: dict[tuple[str, int], tuple[int, int, int]] = {}
        self._config_seen: dict[str, int] = {}
        self._bad_config: dict[str, int] = {}
        self._lock = asyncio.Lock()
        self._poller: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()

    # ---- queries -------------------------------------------------------------------------

    @property
    def serving(self) -> dict[str, dict[int, ServedModel]]:
        return self._serving

    def names(self) -> list[str]:
        return sorted(self._serving)

    def get(self, name: str, version: int = 0) -> ServedModel:
        """The version to serve: the newest loaded one unless a version is named."""
        if not name:
            name = self.settings.default_model
        if not name:
            if len(self._serving) == 1:
                name = next(iter(self._serving))
            else:
                raise ModelNotFound(
                    f"name a model; loaded models: {', '.join(self.names()) or 'none'}"
                )
        versions = self._serving.get(name)
        if not versions:
            if name in self.status:
                raise ModelNotReady(f"model {name!r} is not ready")
            raise ModelNotFound(
                f"model {name!r} is not loaded; loaded models: {', '.join(self.names()) or 'none'}"
            )
        if version:
            model = versions.get(version)
            if model is None:
                raise ModelNotFound(
                    f"model {name!r} has no loaded version {version}; "
                    f"loaded: {sorted(versions, reverse=True)}"
                )
            return model
        return versions[max(versions)]

    def is_ready(self, name: str, version: int = 0) -> bool:
        try:
            self.get(name, version)
        except (ModelNotFound, ModelNotReady):
            return False
        return True

    def all_ready(self) -> bool:
        """Every model that should serve has a ready version (with --strict-readiness), or at
        least one model serves (without)."""
        if self.settings.strict_readiness:
            return all(self._serving.get(name) for name in self._wanted)
        return bool(self._serving) or not self._wanted

    def index(self) -> list[tuple[str, int, str, str]]:
        """(name, version, state, reason) of every model version known, plus unloaded models
        present in the repository (version 0, state UNAVAILABLE)."""
        rows = [
            (name, version, st.state, st.reason)
            for name, versions in sorted(self.status.items())
            for version, st in sorted(versions.items(), reverse=True)
        ]
        known = set(self.status)
        with contextlib.suppress(FileNotFoundError):
            rows += [(n, 0, "UNAVAILABLE", "not loaded") for n in model_names(self.root)
                     if n not in known]  # fmt: skip
        return sorted(rows)

    # ---- lifecycle -----------------------------------------------------------------------

    async def start(self, load: list[str] | None = None) -> None:
        """Initial load according to the control mode; start polling in poll mode.

        In explicit mode only the `load` names are loaded ("*" for every model)."""
        load = load or []
        if self.mode == "explicit":
            names = model_names(self.root) if "*" in load else list(load)
        else:
            names = model_names(self.root)
        for name in names:
            try:
                await self.load(name, _control=True)
            except (ModelControlError, ModelNotFound) as exc:
                log.error("model %s: %s", name, exc)
        if self.mode == "none" and not self._serving:
            raise RuntimeError(f"no model could be loaded from {self.root}")
        if self.mode == "poll":
            self._poller = asyncio.get_running_loop().create_task(self._poll())

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        async with self._lock:
            for name in list(self._serving):
                for version in list(self._serving[name]):
                    self._retire(name, version, "server shutting down")
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

    async def load(self, name: str, _control: bool = False) -> None:
        """Load (or reload) a model's wanted versions. RPC entry point in explicit mode."""
        if not _control and self.mode != "explicit":
            raise ModelControlError(
                f"model control mode is {self.mode!r}; load/unload needs --model-control-mode "
                "explicit"
            )
        if not repo_versions(self.root / name):
            raise ModelNotFound(f"no model {name!r} with a version in {self.root}")
        self._wanted.add(name)
        async with self._lock:
            await self._sync(name)
        if not self._serving.get(name):
            reasons = [st.reason for st in self.status.get(name, {}).values() if st.reason]
            raise ModelControlError(
                f"model {name!r} failed to load: {'; '.join(reasons) or 'no version loaded'}"
            )

    async def unload(self, name: str) -> None:
        if self.mode != "explicit":
            raise ModelControlError(
                f"model control mode is {self.mode!r}; load/unload needs --model-control-mode "
                "explicit"
            )
        if name not in self._serving and name not in self.status:
            raise ModelNotFound(f"model {name!r} is not loaded")
        self._wanted.discard(name)
        async with self._lock:
            for version in list(self._serving.get(name, {})):
                self._retire(name, version, "unloaded by request")
        self._changed()

    # ---- internals -----------------------------------------------------------------------

    def _set_status(self, name: str, version: int, state: str, reason: str = "") -> None:
        self.status.setdefault(name, {})[version] = VersionStatus(state, reason)
        for s in STATES:
            self.metrics.model_state.labels(model=name, version=str(version), state=s).set(
                1 if s == state else 0
            )

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()

    def _route(self, name: str, versions: dict[int, ServedModel]) -> None:
        """Swap a model's routing table in one step (no await between check and swap)."""
        if versions:
            self._serving[name] = versions
        else:
            self._serving.pop(name, None)

    def _retire(self, name: str, version: int, why: str) -> None:
        """Take a version out of routing now; close it once its requests are done."""
        remaining = dict(self._serving.get(name, {}))
        model = remaining.pop(version, None)
        self._route(name, remaining)
        if model is not None:
            self._close_later(model, why)

    def _close_later(self, model: ServedModel, why: str) -> None:
        if model.version not in self._serving.get(model.name, {}):  # not replaced in place
            self._set_status(model.name, model.version, "UNAVAILABLE", why)
            with contextlib.suppress(KeyError):
                self.metrics.model_info.remove(
                    model.name, str(model.version), model.engine.info.provider
                )
            with contextlib.suppress(KeyError):
                self.metrics.model_memory.remove(model.name, str(model.version))
        log.info("model %s version %s leaves service: %s", model.name, model.version, why)
        task = asyncio.get_running_loop().create_task(model.retire())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _load_version(
        self, name: str, entry_version: int, config: ModelConfig
    ) -> ServedModel | None:
        entry = next(e for e in repo_versions(self.root / name) if e.version == entry_version)
        self._set_status(name, entry.version, "LOADING")
        loop = asyncio.get_running_loop()
        try:
            model = await loop.run_in_executor(
                None, load_model, entry, config, self.settings, self.metrics, self.cores
            )
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            log.error("model %s version %s failed to load: %s", name, entry.version, reason)
            self._set_status(name, entry.version, "FAILED", reason)
            self.metrics.load_failures.labels(model=name).inc()
            with contextlib.suppress(OSError):
                self._failed[(name, entry.version)] = entry.fingerprint()
            return None
        model.start()
        self._set_status(name, entry.version, "READY")
        self.metrics.model_info.labels(
            model=name, version=str(entry.version), provider=model.engine.info.provider
        ).set(1)
        return model

    async def _sync(self, name: str) -> None:
        """Bring one model's serving versions in line with the repository and its policy."""
        self.metrics.load_failures.labels(model=name)  # the series exists (at 0) from the start
        model_dir = self.root / name
        entries = repo_versions(model_dir)
        serving = self._serving.get(name, {})
        if not entries:
            for version in list(serving):
                self._retire(name, version, "removed from the repository")
            self._changed()
            return
        config_print = config_fingerprint(model_dir)
        if self._bad_config.get(name) == config_print:
            return  # the same bad config.json failed before: wait for a change
        try:
            config = read_model_config(model_dir)
        except Exception as exc:
            self._bad_config[name] = config_print
            reason = f"bad {model_dir / 'config.json'}: {exc}"
            log.error("model %s: %s", name, reason)
            for e in entries[:1]:
                if e.version not in serving:
                    self._set_status(name, e.version, "FAILED", reason)
            self.metrics.load_failures.labels(model=name).inc()
            return
        self._bad_config.pop(name, None)
        config_changed = self._config_seen.get(name) != config_print
        self._config_seen[name] = config_print
        wanted = config.version_policy.select([e.version for e in entries])
        fingerprints = {e.version: e.fingerprint() for e in entries}
        loaded: dict[int, ServedModel] = {}
        for version in wanted:
            current = serving.get(version)
            unchanged = current is not None and current.fingerprint == fingerprints[version]
            if unchanged and not config_changed:
                continue
            if self._failed.get((name, version)) == fingerprints[version] and not config_changed:
                continue  # the same bytes failed before: wait for a change
            model = await self._load_version(name, version, config)
            if model is not None:
                loaded[version] = model
                self._failed.pop((name, version), None)
        if not loaded and not any(v in serving for v in wanted) and serving:
            log.warning(
                "model %s: no wanted version %s loaded; keeping %s in service",
                name, wanted, sorted(serving),
            )  # fmt: skip
            self._changed()
            return
        routed = dict(serving)
        leaving: list[tuple[ServedModel, str]] = []
        for version, model in loaded.items():
            if version in routed:
                leaving.append((routed[version], "replaced by a new load"))
            routed[version] = model
        for version in list(routed):
            if version not in wanted:
                leaving.append((routed.pop(version), "not in the version policy any more"))
        self._route(name, routed)
        for model, why in leaving:
            self._close_later(model, why)
        self._changed()

    async def _poll(self) -> None:
        interval = self.settings.poll_interval_s
        while True:
            await asyncio.sleep(interval)
            try:
                present = set(model_names(self.root))
                for name in sorted(present | set(self._serving)):
                    if name in present:
                        self._wanted.add(name)
                    else:
                        self._wanted.discard(name)
                    async with self._lock:
                        await self._sync(name)
            except Exception:
                log.exception("repository poll failed; will retry")
