"""imgclf.models.rollout: which versions load and which serve after a pass, on version numbers
and fingerprints alone (the manager's tests drive the same decisions through real loads)."""

from __future__ import annotations

from imgclf.models.rollout import reroute, settled_versions, versions_to_load

A, B = (1, 10, 0), (2, 20, 0)
"""Two fingerprints of a version's files."""


def test_poll_passes_settle_only_files_seen_unchanged() -> None:
    on_disk = {1: A, 2: B}
    assert settled_versions(on_disk, {1: A, 2: A}, settle=True) == {1}
    assert settled_versions(on_disk, {}, settle=True) == set()
    assert settled_versions(on_disk, {}, settle=False) == {1, 2}


def test_load_what_changed_and_settled_and_did_not_fail_on_these_bytes() -> None:
    on_disk = {1: A, 2: B, 3: A}
    serving = {1: A}  # version 1 serves these very files
    failed = {3: A}  # version 3 failed on these very files
    assert versions_to_load([3, 2, 1], on_disk, serving, {1, 2, 3}, failed, False) == [2]
    assert versions_to_load([2], on_disk, serving, {1}, failed, False) == []  # unsettled
    # A changed config reloads what serves and retries what failed.
    assert versions_to_load([3, 2, 1], on_disk, serving, {1, 2, 3}, failed, True) == [3, 2, 1]


def test_a_failed_new_version_keeps_the_old_one_serving() -> None:
    routed, leaving = reroute({1: "v1"}, {}, wanted=[2], on_disk={1: A, 2: B})
    assert routed == {1: "v1"} and leaving == []


def test_the_new_version_replaces_what_left_the_policy_or_the_disk() -> None:
    routed, leaving = reroute(
        {1: "v1", 2: "v2", 3: "v3"},
        {2: "v2 new", 4: "v4"},
        wanted=[4, 2],
        on_disk={1: A, 2: A, 4: B},
    )
    assert routed == {2: "v2 new", 4: "v4"}
    assert leaving == [
        ("v2", "replaced by a new load"),
        ("v1", "not in the version policy any more"),
        ("v3", "its folder was removed from the repository"),
    ]
