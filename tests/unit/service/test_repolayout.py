"""imgclf.repolayout: the version folders of a model, the entry of one version, the sidecar and
the fingerprint polling compares."""

from __future__ import annotations

from pathlib import Path

from imgclf.repolayout import inside, read_json, versions
from tests.unit.service.support import bump_mtime, put_model, write_json


def test_versions_of_a_missing_folder(tmp_path):
    assert versions(tmp_path / "nowhere") == []


def test_zero_padded_version_folder(tmp_path):
    """A version folder named "007" is version 7; the entry must point at that folder."""
    model = put_model(tmp_path, "m", "007")
    write_json(tmp_path / "m" / "007" / "config.json", {"labels": ["a"]})
    (entry,) = versions(tmp_path / "m")
    assert entry.version == 7
    assert entry.path == model
    assert entry.path.is_file()
    assert entry.read_sidecar() == {"labels": ["a"]}


def test_one_entry_per_version_number(tmp_path):
    """Folders "7" and "007" both name version 7. Two entries for one version make the manager
    compare the fingerprint of one folder with the model loaded from the other: in poll mode,
    when the two files differ, version 7 is reloaded at every poll."""
    put_model(tmp_path, "m", "7")
    put_model(tmp_path, "m", "007")
    put_model(tmp_path, "m", "3")
    found = [e.version for e in versions(tmp_path / "m")]
    assert found == [7, 3]


def test_fingerprint_follows_the_model_file_and_its_sidecar(tmp_path):
    model = put_model(tmp_path, "m", "1")
    (entry,) = versions(tmp_path / "m")
    first = entry.fingerprint()
    assert first == entry.fingerprint()  # stable while nothing changes
    assert first[2] == 0  # no sidecar

    bump_mtime(model)
    second = entry.fingerprint()
    assert second != first

    model.write_bytes(b"a longer model file")
    third = entry.fingerprint()
    assert third[1] == len(b"a longer model file")
    assert third != second

    write_json(model.parent / "config.json", {"labels": ["a"]})
    assert entry.fingerprint()[2] != 0


def test_inside_follows_links(tmp_path: Path) -> None:
    root, outside = tmp_path / "repo", tmp_path / "outside"
    (root / "m").mkdir(parents=True)
    outside.mkdir()
    (root / "in").symlink_to(root / "m", target_is_directory=True)
    (root / "out").symlink_to(outside, target_is_directory=True)
    (root / "loop").symlink_to(root / "loop")
    assert inside(root / "m", root) and inside(root / "in", root)
    assert not inside(root / "out", root)
    assert not inside(root / "loop", root)


def test_read_json_of_a_missing_file_is_empty(tmp_path: Path) -> None:
    assert read_json(tmp_path / "config.json") == {}
    write_json(tmp_path / "config.json", {"labels": ["a"]})
    assert read_json(tmp_path / "config.json") == {"labels": ["a"]}
