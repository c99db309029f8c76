"""imgclf.models.repository: scanning models/<name>/<version>/model.onnx, the config files and the
version policy."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from imgclf.errors import InvalidModelName
from imgclf.models.repository import (
    ModelConfig,
    VersionPolicy,
    check_model_name,
    config_fingerprint,
    model_dir,
    model_names,
    read_model_config,
    relative_to_root,
    scan,
)
from imgclf.repolayout import versions
from tests.traversal import LINKS, layout, traversal_names
from tests.unit.service.support import bump_mtime, put_model, write_json

# --- scanning -------------------------------------------------------------------------------


def test_versions_newest_first_in_numeric_order(tmp_path):
    for v in ("1", "2", "10", "9"):
        put_model(tmp_path, "resnet", v)
    (tmp_path / "resnet" / "11").mkdir()  # newer, but holds no model
    put_model(tmp_path, "resnet", "latest")  # not numeric
    put_model(tmp_path, "resnet", "12-rc")
    (tmp_path / "resnet" / "13").write_text("a file, not a folder")
    (tmp_path / "resnet" / "14" / "model.onnx").mkdir(parents=True)  # a folder named model.onnx

    entries = versions(tmp_path / "resnet")

    assert [e.version for e in entries] == [10, 9, 2, 1]  # numeric order, not lexical
    newest = entries[0]
    assert newest.name == "resnet"
    assert newest.path == tmp_path / "resnet" / "10" / "model.onnx"
    assert newest.read_sidecar() == {}
    assert read_model_config(tmp_path / "resnet") == ModelConfig()


def test_model_names_sorted_and_empty_ones_skipped(tmp_path):
    put_model(tmp_path, "zeta", "1")
    put_model(tmp_path, "alpha", "2")
    (tmp_path / "empty").mkdir()
    (tmp_path / "only-text" / "1").mkdir(parents=True)
    (tmp_path / "only-text" / "1" / "notes.txt").write_text("no model here")
    (tmp_path / "stray.onnx").write_bytes(b"onnx")
    assert model_names(tmp_path) == ["alpha", "zeta"]


# --- names: the one check every door passes ------------------------------------------------


@pytest.mark.parametrize("name", ["tiny", "resnet-18", "efficientnet_lite0", "v1.2", "A" * 128])
def test_plain_names_pass(name):
    assert check_model_name(name) == name


@pytest.mark.parametrize("name", ["", "a" * 129, ".x", "x/y", "x\x00"])
def test_odd_names_are_refused(name):
    with pytest.raises(InvalidModelName, match="not a plain name"):
        check_model_name(name)


def test_every_traversal_name_is_refused(tmp_path):
    """Each name of tests/traversal.py is refused by model_dir, and none resolves to the
    outside model (links are refused by model_dir or have no version inside)."""
    repo, _ = layout(tmp_path)
    names = traversal_names(tmp_path)
    assert len(names) >= 60
    for name in names:
        try:
            folder = model_dir(repo, name)
        except InvalidModelName as exc:
            assert "model" in str(exc)
            continue
        assert name in LINKS, f"{name!r} passed the name check"
        assert versions(folder) == [], f"{name!r} reached a version outside the repository"


def test_scan_skips_links_out_of_the_repository_and_reports_them(tmp_path):
    repo, _ = layout(tmp_path)
    (repo / "..hidden").mkdir()
    (repo / "bad name").mkdir()
    names, refused = scan(repo)
    assert names == ["tiny"]
    assert model_names(repo) == ["tiny"]
    assert set(refused) == {"link-model", "bad name"}  # hidden entries are skipped quietly
    assert "links outside" in refused["link-model"]


def test_links_inside_the_repository_are_followed(tmp_path):
    """A link that stays inside the repository (a Kubernetes ConfigMap's ..data) is fine."""
    put_model(tmp_path, "real", "1")
    (tmp_path / "alias").symlink_to(tmp_path / "real", target_is_directory=True)
    (tmp_path / "real" / "2").symlink_to(tmp_path / "real" / "1", target_is_directory=True)
    assert model_names(tmp_path) == ["alias", "real"]
    assert [e.version for e in versions(model_dir(tmp_path, "alias"))] == [2, 1]


def test_config_files_linking_outside_are_refused(tmp_path):
    repo, outside = layout(tmp_path)
    write_json(outside / "config.json", {"max_batch_size": 2})
    (repo / "tiny" / "config.json").symlink_to(outside / "config.json")
    with pytest.raises(ValueError, match="links outside"):
        read_model_config(repo / "tiny")
    (repo / "tiny" / "1" / "config.json").symlink_to(outside / "config.json")
    assert versions(repo / "tiny") == []  # a version whose sidecar links out is no version


def test_relative_to_root_with_a_relative_repository_path():
    text = "Load model from m/1/model.onnx failed; the platform/m/x stays"
    assert relative_to_root(text, Path("m")) == (
        "Load model from 1/model.onnx failed; the platform/m/x stays"
    )


def test_relative_to_root_strips_the_repository_path(tmp_path):
    path = tmp_path / "m" / "1" / "model.onnx"
    text = f"Load model from {path} failed: bad; also {tmp_path.resolve()}/m/config.json"
    assert relative_to_root(text, tmp_path) == (
        "Load model from m/1/model.onnx failed: bad; also m/config.json"
    )


def test_missing_repository(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        model_names(tmp_path / "nowhere")


def test_sidecar_belongs_to_its_version(tmp_path):
    put_model(tmp_path, "m", "1")
    put_model(tmp_path, "m", "2")
    write_json(tmp_path / "m" / "1" / "config.json", {"labels": ["old"]})
    write_json(tmp_path / "m" / "2" / "config.json", {"labels": ["a", "b"], "input_size": 224})
    new, old = versions(tmp_path / "m")
    assert new.read_sidecar() == {"labels": ["a", "b"], "input_size": 224}
    assert old.read_sidecar() == {"labels": ["old"]}
    # A version's config.json is metadata, never serving config.
    assert read_model_config(tmp_path / "m") == ModelConfig()


def test_config_fingerprint(tmp_path):
    put_model(tmp_path, "m", "1")
    assert config_fingerprint(tmp_path / "m") == 0
    write_json(tmp_path / "m" / "config.json", {})
    seen = config_fingerprint(tmp_path / "m")
    assert seen != 0
    bump_mtime(tmp_path / "m" / "config.json")
    assert config_fingerprint(tmp_path / "m") != seen


# --- models/<name>/config.json --------------------------------------------------------------


def test_model_config_read(tmp_path):
    put_model(tmp_path, "m", "1")
    write_json(
        tmp_path / "m" / "config.json",
        {
            "max_batch_size": 16,
            "max_queue_delay_ms": 0,
            "max_queue_size": 32,
            "providers": "cpu",
            "preferred_batch_sizes": [4, 8],
            "priority_levels": 3,
            "default_priority_level": 2,
            "version_policy": {"latest": 2},
            "instances": 2,
            "gpus": [0, 1],
        },
    )
    assert read_model_config(tmp_path / "m") == ModelConfig(
        max_batch_size=16,
        max_queue_delay_ms=0.0,
        max_queue_size=32,
        providers="cpu",
        preferred_batch_sizes=[4, 8],
        priority_levels=3,
        default_priority_level=2,
        version_policy=VersionPolicy(latest=2),
        instances=2,
        gpus=[0, 1],
    )


def test_model_config_defaults():
    config = ModelConfig()
    assert config.priority_levels == 1
    assert config.default_priority_level == 1
    assert config.instances is None  # the server's --instances (auto)
    assert config.instance_kind == "auto"
    assert config.version_policy == VersionPolicy()
    assert config.preferred_batch_sizes == []


@pytest.mark.parametrize(
    "config",
    [
        {"max_batch_sise": 4},  # unknown key
        {"version_policy": {"newest": 1}},  # unknown key in the policy
        {"max_batch_size": 0},
        {"instances": 0},
        {"priority_levels": 0},
        {"instance_kind": "tpu"},
        {"providers": "rocm"},
        {"preferred_batch_sizes": [4, 0]},
        {"priority_levels": 2, "default_priority_level": 3},
        {"default_priority_level": 2},  # beyond the default single level
    ],
)
def test_model_config_errors(tmp_path, config):
    put_model(tmp_path, "m", "1")
    write_json(tmp_path / "m" / "config.json", config)
    assert model_names(tmp_path) == ["m"]  # a bad config fails that model's load, not the scan
    with pytest.raises(pydantic.ValidationError):
        read_model_config(tmp_path / "m")


def test_default_priority_level_beyond_levels_is_named():
    with pytest.raises(pydantic.ValidationError, match="default_priority_level must be <="):
        ModelConfig(priority_levels=2, default_priority_level=3)


def test_config_must_be_an_object(tmp_path):
    put_model(tmp_path, "m", "1")
    write_json(tmp_path / "m" / "config.json", [1, 2])
    with pytest.raises(ValueError, match="must hold a JSON object"):
        read_model_config(tmp_path / "m")


# --- version policy -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "selected"),
    [
        ({}, [10]),  # default: the newest
        ({"latest": 1}, [10]),
        ({"latest": 2}, [10, 3]),
        ({"latest": 9}, [10, 3, 2, 1]),  # more than there are: all of them
        ({"all": True}, [10, 3, 2, 1]),
        ({"specific": [1, 3]}, [3, 1]),
        ({"specific": [2, 7]}, [2]),  # 7 is not in the repository
        ({"specific": [7]}, []),
    ],
)
def test_version_policy_select(policy, selected):
    assert VersionPolicy(**policy).select([2, 10, 1, 3]) == selected


def test_version_policy_select_nothing_available():
    assert VersionPolicy(latest=2).select([]) == []
    assert VersionPolicy(all=True).select([]) == []


@pytest.mark.parametrize(
    "policy",
    [
        {"latest": 2, "all": True},
        {"latest": 1, "specific": [1]},
        {"all": True, "specific": [1]},
        {"latest": 0},
        {"latest": -1},
        {"newest": 1},
    ],
)
def test_version_policy_invalid(policy):
    with pytest.raises(pydantic.ValidationError):
        VersionPolicy(**policy)


def test_version_policy_one_kind_is_named():
    with pytest.raises(pydantic.ValidationError, match="one of latest, all, specific"):
        VersionPolicy(latest=2, all=True)
