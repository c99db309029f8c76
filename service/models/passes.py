"""What the model manager reads of the repository, pass after pass (imgclf.models.manager):
the models in it (an entry refused as a name is logged once), one model's versions with the
fingerprints of their files, and its config.json, remembering what the previous pass saw so
that poll mode acts only on files two passes in a row saw unchanged and does not retry the
same bad config.json at every pass.
"""

from __future__ import annotations

import logging
from pathlib import Path

from imgclf.errors import InvalidModelName
from imgclf.models.repository import (
    ModelConfig,
    config_fingerprint,
    model_dir,
    read_model_config,
    scan,
)
from imgclf.models.rollout import Fingerprint
from imgclf.repolayout import ModelEntry, versions

log = logging.getLogger(__name__)

Entries = dict[int, tuple[ModelEntry, Fingerprint]]


class BadConfig(Exception):
    """A model's config.json cannot be read (the message says why; logged once per file)."""


class RepositoryPasses:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._refused: set[str] = set()
        """Repository entries refused as model names (logged once each)."""
        self._seen: dict[str, dict[int, Fingerprint]] = {}
        self._seen_config: dict[str, int] = {}
        """What the previous pass saw on disk (poll mode loads only files seen unchanged)."""
        self._config_seen: dict[str, int] = {}
        """The config.json each model was last read from."""
        self._bad_config: dict[str, int] = {}

    def model_names(self) -> list[str]:
        """The repository's models; entries refused as names are logged (once each)."""
        names, refused = scan(self.root)
        for entry in sorted(set(refused) - self._refused):
            log.warning("repository entry %r ignored: %s", entry, refused[entry])
        self._refused = set(refused)
        return names

    def versions(self, name: str) -> tuple[Path | None, Entries, dict[int, Fingerprint]]:
        """The model's folder (None when it now links outside the repository: as good as
        gone), its versions with their fingerprints (a version gone meanwhile: absent), and
        the fingerprints the previous pass saw."""
        folder: Path | None
        try:
            folder = model_dir(self.root, name)
        except InvalidModelName:
            folder = None
        entries: Entries = {}
        for e in versions(folder) if folder is not None else []:
            fingerprint = current_fingerprint(e)
            if fingerprint is not None:
                entries[e.version] = (e, fingerprint)
        on_disk = {v: fp for v, (_, fp) in entries.items()}
        seen, self._seen[name] = self._seen.get(name, {}), on_disk
        return folder, entries, seen

    def config(self, name: str, folder: Path, settle: bool) -> tuple[ModelConfig, bool] | None:
        """The model's config.json and whether it changed since it was last read; None to
        wait while it changes (`settle`: poll passes) or while it is the same bad file.
        BadConfig the first time a file cannot be read."""
        config_print = config_fingerprint(folder)
        seen_config, self._seen_config[name] = self._seen_config.get(name), config_print
        if settle and seen_config is not None and seen_config != config_print:
            return None  # config.json is changing: wait for a pass that sees it unchanged
        if self._bad_config.get(name) == config_print:
            return None  # the same bad config.json failed before: wait for a change
        try:
            config = read_model_config(folder)
        except Exception as exc:
            self._bad_config[name] = config_print
            raise BadConfig(f"bad {folder / 'config.json'}: {exc}") from exc
        self._bad_config.pop(name, None)
        config_changed = self._config_seen.get(name) != config_print
        self._config_seen[name] = config_print
        return config, config_changed

    def forget(self, name: str) -> None:
        """A model gone from the repository: what passes saw of it no longer counts."""
        for memo in (self._seen, self._seen_config, self._config_seen, self._bad_config):
            memo.pop(name, None)


def current_fingerprint(entry: ModelEntry) -> Fingerprint | None:
    """The entry's fingerprint now, or None when its files are gone."""
    try:
        return entry.fingerprint()
    except OSError:
        return None
