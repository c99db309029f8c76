"""Domain errors -> HTTP statuses: the gRPC code's counterpart for every error class."""

from __future__ import annotations

import json

import pytest

from imgclf import errors
from imgclf.http.errors import HTTP_STATUS, domain_error_response


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (errors.InvalidInput("bad"), 400),
        (errors.ModelNotFound("no model"), 404),
        (errors.ModelNotReady("not ready"), 503),
        (errors.QueueFull("full"), 429),
        (errors.DeadlineExceeded("late"), 504),
        (errors.ModelControlError("mode"), 400),
        (errors.Unsupported("no"), 501),
        (errors.InferenceFailed("engine exploded at 0x7f"), 500),
    ],
)
def test_each_error_gets_its_status_and_a_json_message(error: errors.ImgclfError,
                                                       status: int) -> None:  # fmt: skip
    response = domain_error_response(error)
    assert response.status == status
    assert response.content_type == "application/json"
    message = json.loads(response.body)["error"]
    if status == 500:  # never the internal detail
        assert message == "internal error; see the server log"
    else:
        assert message == str(error)


def test_every_domain_code_has_a_status() -> None:
    codes = {cls.code for cls in vars(errors).values()
             if isinstance(cls, type) and issubclass(cls, errors.ImgclfError)}  # fmt: skip
    assert codes <= set(HTTP_STATUS)


def test_queue_full_says_when_to_retry_in_whole_seconds() -> None:
    response = domain_error_response(errors.QueueFull("full", retry_after_ms=1500))
    assert (response.status, response.headers["Retry-After"]) == (429, "2")
    response = domain_error_response(errors.QueueFull("full", retry_after_ms=20))
    assert response.headers["Retry-After"] == "1"
    assert "Retry-After" not in domain_error_response(errors.QueueFull("full")).headers
