"""API enablement rule: disableOnDestroy explicitly false."""

from __future__ import annotations

from typing import Any

import pytest
from policy_args import UNKNOWN_BOOL, check

from guardrails import tokens
from guardrails.apis import validate_api_kept_on_destroy

API = {"project": "p", "service": "cloudtasks.googleapis.com", "disableDependentServices": False}


@pytest.mark.parametrize(
    ("props", "shown"),
    [
        pytest.param(API | {"disableOnDestroy": False}, None, id="explicitly false (the program's)"),
        pytest.param(API | {"disableOnDestroy": UNKNOWN_BOOL}, None, id="unknown"),
        pytest.param(API, "unset", id="unset: the default has flipped before"),
        pytest.param(API | {"disableOnDestroy": True}, "True", id="true"),
        pytest.param(API | {"disableOnDestroy": "false"}, '"false"', id="a string is not false"),
    ],
)
def test_apis_stay_on_when_the_stack_is_destroyed(props: dict[str, Any], shown: str | None) -> None:
    messages = check(validate_api_kept_on_destroy, tokens.PROJECT_API, props, name="tasks-apis-cloudtasks")
    if shown is None:
        assert messages == []
        return
    assert messages == [
        f"API enablement 'tasks-apis-cloudtasks' (cloudtasks.googleapis.com): disableOnDestroy is {shown}: "
        "destroying this stack could switch the API off for every workload in the project. Fix: set "
        "disable_on_destroy=False explicitly."
    ]


def test_other_types_are_not_checked() -> None:
    assert check(validate_api_kept_on_destroy, tokens.RUN_SERVICE, {}) == []
