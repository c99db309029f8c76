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

from imgclf.errors import InvalidModelName, ModelControlError, ModelNotFound, ModelNotReady
from imgclf.metrics.prometheus import Metrics
from imgclf.models.loader import ServedModel, load_model
from imgclf.models.passes import BadConfig, RepositoryPasses, current_fingerprint
from imgclf.models.repository import ModelConfig, model_dir, relative_to_root
from imgclf.models.rollout import Fingerprint, reroute, settled_versions, versions_to_load
from imgclf.repolayout import ModelEntry
from imgclf.repolayout import versions as repo_versions
from imgclf.runtime.cores import Cores
from imgclf.settings import ServerSettings

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
        self._failed: dict[tuple[str, int], Fingerprint] = {}
        """Versions that failed to load, with the fingerprint of the files that failed."""
        self._passes = RepositoryPasses(self.root)
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
            rows += [(n, 0, "UNAVAILABLE", "not loaded") for n in self._passes.model_names()
                     if n not in known]  # fmt: skip
        return sorted(rows)

    # ---- lifecycle -----------------------------------------------------------------------

    async def start(self, load: list[str] | None = None) -> None:
        """Initial load according to the control mode; start polling in poll mode.

        In explicit mode only the `load` names are loaded ("*" for every model)."""
        load = load or []
        if self.mode == "explicit":
            names = self._passes.model_names() if "*" in load else list(load)
        else:
            names = self._passes.model_names()
        for name in names:
            try:
                await self.load(name, _control=True)
            except (ModelControlError, ModelNotFound, InvalidModelName) as exc:
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
        folder = model_dir(self.root, name)  # InvalidModelName before anything else
        if not _control and self.mode != "explicit":
            raise ModelControlError(
                f"model control mode is {self.mode!r}; load/unload needs --model-control-mode "
                "explicit"
            )
        if not repo_versions(folder):
            raise ModelNotFound(f"no model {name!r} with a version in the model repository")
        self._wanted.add(name)
        async with self._lock:
            await self._sync(name)
        if not self._serving.get(name):
            reasons = [st.reason for st in self.status.get(name, {}).values() if st.reason]
            raise ModelControlError(
                f"model {name!r} failed to load: {'; '.join(reasons) or 'no version loaded'}"
            )

    async def unload(self, name: str) -> None:
        model_dir(self.root, name)  # InvalidModelName before anything else
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

    def _forget(self, name: str, version: int) -> None:
        """Drop a version that left the repository from the index and the state metric."""
        self.status.get(name, {}).pop(version, None)
        if not self.status.get(name):
            self.status.pop(name, None)
        self._failed.pop((name, version), None)
        for s in STATES:
            with contextlib.suppress(KeyError):
                self.metrics.model_state.remove(name, str(version), s)

    def _public(self, text: str) -> str:
        """A reason as clients see it: paths relative to the repository root."""
        return relative_to_root(text, self.root)

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
                    model.name, str(model.version), model.engine.info.provider, model.precision
                )
            with contextlib.suppress(KeyError):
                self.metrics.model_memory.remove(model.name, str(model.version))
        log.info("model %s version %s leaves service: %s", model.name, model.version, why)
        task = asyncio.get_running_loop().create_task(model.retire())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _load_version(
        self, entry: ModelEntry, before: Fingerprint, config: ModelConfig
    ) -> ServedModel | None:
        """Load one version whose files had fingerprint `before`. A failure is remembered
        against `before` only if the files still have it afterwards: a file that changed while
        it was read (still being copied in) is tried again, not held as failed for good."""
        name = entry.name
        self._set_status(name, entry.version, "LOADING")
        loop = asyncio.get_running_loop()
        try:
            model = await loop.run_in_executor(
                None, load_model, entry, config, self.settings, self.metrics, self.cores
            )
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            log.error("model %s version %s failed to load: %s", name, entry.version, reason)
            self._set_status(name, entry.version, "FAILED", self._public(reason))
            self.metrics.load_failures.labels(model=name).inc()
            if current_fingerprint(entry) == before:
                self._failed[(name, entry.version)] = before
            return None
        model.start()
        self._set_status(name, entry.version, "READY")
        self.metrics.model_info.labels(
            model=name,
            version=str(entry.version),
            provider=model.engine.info.provider,
            precision=model.precision,
        ).set(1)
        return model

    async def _sync(self, name: str, settle: bool = False) -> None:
        """Bring one model's serving versions in line with the repository and its policy.

        With `settle` (poll passes), a version whose files changed since the previous pass is
        not loaded yet (it may still be being copied in): it counts once two passes in a row
        saw the same files. A serving version whose folder is gone leaves service (after a
        replacement the policy allows has loaded, if any); a version gone from disk and out
        of service leaves the index and `imgclf_model_state` (imgclf.models.rollout)."""
        self.metrics.load_failures.labels(model=name)  # the series exists (at 0) from the start
        folder, entries, seen = self._passes.versions(name)
        on_disk = {v: fp for v, (_, fp) in entries.items()}
        serving = self._serving.get(name, {})
        if not entries:
            for version in list(serving):
                self._retire(name, version, "removed from the repository")
            self._forget_missing(name, on_disk)
            self._changed()
            return
        assert folder is not None
        try:
            read = self._passes.config(name, folder, settle)
        except BadConfig as exc:
            log.error("model %s: %s", name, exc)
            if max(entries) not in serving:
                self._set_status(name, max(entries), "FAILED", self._public(str(exc)))
            self.metrics.load_failures.labels(model=name).inc()
            return
        if read is None:
            return
        config, config_changed = read
        settled = settled_versions(on_disk, seen, settle)
        # A version still being written is not a candidate yet, unless it serves already.
        wanted = config.version_policy.select(sorted(settled | (set(serving) & set(on_disk))))
        failed = {v: fp for (n, v), fp in self._failed.items() if n == name}
        prints = {v: m.fingerprint for v, m in serving.items()}
        loaded: dict[int, ServedModel] = {}
        for version in versions_to_load(wanted, on_disk, prints, settled, failed, config_changed):
            entry, fingerprint = entries[version]
            model = await self._load_version(entry, fingerprint, config)
            if model is not None:
                loaded[version] = model
                self._failed.pop((name, version), None)
        routed, leaving = reroute(serving, loaded, wanted, on_disk)
        if routed and not any(v in routed for v in wanted):
            log.warning(
                "model %s: no wanted version %s loaded; keeping %s in service",
                name, wanted, sorted(routed),
            )  # fmt: skip
        self._route(name, routed)
        for model, why in leaving:
            self._close_later(model, why)
        self._forget_missing(name, on_disk)
        self._changed()

    def _forget_missing(self, name: str, on_disk: dict[int, Fingerprint]) -> None:
        """Forget the versions of `name` that are neither on disk nor serving."""
        serving = self._serving.get(name, {})
        for version in list(self.status.get(name, {})):
            if version not in on_disk and version not in serving:
                self._forget(name, version)
        if not on_disk:
            self._passes.forget(name)

    async def _poll(self) -> None:
        interval = self.settings.poll_interval_s
        while True:
            await asyncio.sleep(interval)
            try:
                present = set(self._passes.model_names())
            except Exception:
                log.exception("repository poll failed; will retry")
                continue
            for name in sorted(present | set(self._serving) | set(self.status)):
                if name in present:
                    self._wanted.add(name)
                else:
                    self._wanted.discard(name)
                try:
                    async with self._lock:
                        await self._sync(name, settle=True)
                except Exception:
                    log.exception("model %s: repository poll failed; will retry", name)
