"""imgclf.errors.redact: what of an error message may reach a client."""

from __future__ import annotations

import pytest

from imgclf.errors import MAX_MESSAGE_CHARS, redact


@pytest.mark.parametrize(
    "text",
    [
        "image 2: tensor shape [3, 16, 16] needs 3072 bytes of float32, got 100",
        "model 'tiny' has no loaded version 9; loaded: [2, 1]",
        "must have shape [N] or [N, 1]; use a/b relative paths, 1/2 ratios, http://host/x",
        "bad tiny/config.json: max_batch_size: Input should be greater than or equal to 1",
        "",
    ],
)
def test_ordinary_messages_pass_unchanged(text):
    assert redact(text) == text


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("from /srv/models/tiny/1/model.onnx failed", "from .../model.onnx failed"),
        ("bad '/home/op/repo/m/config.json': x", "bad '.../config.json': x"),
        ("see /usr/lib/python3/x.py, line 3", "see .../x.py, line 3"),
        ("in /tmp/a/", "in .../"),
    ],
)  # fmt: skip
def test_absolute_paths_lose_their_folders(text, shown):
    assert redact(text) == shown


def test_long_messages_are_cut_in_the_middle_keeping_both_ends():
    name = "x" * 1_000_000
    text = f"model {name!r} is not loaded; loaded models: luma, tiny"
    shown = redact(text)
    assert len(shown) <= MAX_MESSAGE_CHARS
    assert shown.startswith("model 'xxx")
    assert shown.endswith("' is not loaded; loaded models: luma, tiny")
    assert f"[{len(text) - (MAX_MESSAGE_CHARS - 40)} characters cut]" in shown


def test_a_message_at_the_limit_is_kept_whole():
    text = "y" * MAX_MESSAGE_CHARS
    assert redact(text) == text
    assert len(redact(text + "z")) <= MAX_MESSAGE_CHARS
