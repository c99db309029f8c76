"""imgclf.runtime.options: the execution options of a session and the ONNX Runtime session
options they make."""

from __future__ import annotations

import re
from pathlib import Path

import onnxruntime as ort
import pytest

from imgclf.runtime.options import ExecutionOptions, session_options

# --- ExecutionOptions -----------------------------------------------------------------------


def test_defaults_are_safe_for_a_shared_cpu():
    options = ExecutionOptions()
    assert options.providers == "auto"
    assert options.allow_spinning is False
    assert options.inter_op_threads == 1
    assert options.cudnn_conv_algo_search == "HEURISTIC"
    assert options.gpu_mem_limit_bytes == 0
    assert options.io_binding is True


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("providers", "gpu", "providers must be one of auto, cpu, cuda, tensorrt"),
        ("gpu_id", -1, "gpu_id must be >= 0"),
        ("intra_op_threads", -2, "intra_op_threads must be >= 0"),
        ("inter_op_threads", -1, "inter_op_threads must be >= 0"),
        ("cudnn_conv_algo_search", "heuristic", "cudnn_conv_algo_search must be one of"),
        ("gpu_mem_limit_bytes", -1, "gpu_mem_limit_bytes must be >= 0"),
        ("arena_extend_strategy", "grow", "arena_extend_strategy must be one of"),
    ],
)
def test_invalid_options_rejected(field, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ExecutionOptions(**{field: value})


def test_cache_dir_given_as_text_becomes_a_path():
    assert ExecutionOptions(tensorrt_cache_dir="/var/cache/trt").tensorrt_cache_dir == Path(
        "/var/cache/trt"
    )


# --- session options ------------------------------------------------------------------------


def test_session_options_turn_spinning_off_by_default():
    so = session_options(ExecutionOptions(intra_op_threads=3, inter_op_threads=2))
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert so.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    assert so.intra_op_num_threads == 3
    assert so.inter_op_num_threads == 2
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert so.log_severity_level == 3
    assert so.get_session_config_entry("session.x64quantprecision") == "1"  # exact INT8


def test_session_options_allow_spinning():
    so = session_options(ExecutionOptions(allow_spinning=True))
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert so.get_session_config_entry("session.inter_op.allow_spinning") == "1"
