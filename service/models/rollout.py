"""Which versions of a model load and which serve after a pass over the repository: decisions
over version numbers and file fingerprints only (no I/O, no models started), for
imgclf.models.manager.

Poll mode loads only files that two passes in a row saw unchanged (they may still be being
copied in) and holds a failed load against the fingerprint of the files that failed. A new
version that fails keeps the old one in service: out-of-policy versions leave only once a
wanted one serves; a version whose folder is gone leaves regardless.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TypeVar

Fingerprint = tuple[int, int, int]
M = TypeVar("M")
"""A served model version (imgclf.models.loader.ServedModel)."""


def settled_versions(
    on_disk: Mapping[int, Fingerprint], seen: Mapping[int, Fingerprint], settle: bool
) -> set[int]:
    """The versions whose files the previous pass saw the same (all of them without `settle`)."""
    return {v for v, fp in on_disk.items() if not settle or seen.get(v) == fp}


def versions_to_load(
    wanted: Iterable[int],
    on_disk: Mapping[int, Fingerprint],
    serving: Mapping[int, Fingerprint],
    settled: set[int],
    failed: Mapping[int, Fingerprint],
    config_changed: bool,
) -> list[int]:
    """The wanted versions to (re)load: not serving these very files (unless the model's
    config changed), settled, and not the same files that failed before (unless the config
    changed). `serving` and `failed` map versions to the fingerprints they were loaded from."""
    out = []
    for version in wanted:
        fingerprint = on_disk[version]
        if serving.get(version) == fingerprint and not config_changed:
            continue
        if version not in settled:
            continue  # changing right now: keep what serves, look again next pass
        if failed.get(version) == fingerprint and not config_changed:
            continue  # the same bytes failed before: wait for a change
        out.append(version)
    return out


def reroute(
    serving: Mapping[int, M],
    loaded: Mapping[int, M],
    wanted: list[int],
    on_disk: Mapping[int, Fingerprint],
) -> tuple[dict[int, M], list[tuple[M, str]]]:
    """The routing table after a pass (`loaded` replacing what served), and the models that
    leave service with why."""
    routed = dict(serving)
    leaving: list[tuple[M, str]] = []
    for version, model in loaded.items():
        if version in routed:
            leaving.append((routed[version], "replaced by a new load"))
        routed[version] = model
    any_wanted = any(v in routed for v in wanted)
    for version in sorted(routed):
        if version not in on_disk:
            leaving.append((routed.pop(version), "its folder was removed from the repository"))
        elif version not in wanted and any_wanted:
            leaving.append((routed.pop(version), "not in the version policy any more"))
    return routed, leaving
