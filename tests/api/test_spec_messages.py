"""A job spec's 422 names the field at fault and says what to write instead: the setting a typo
meant, what was sent where the kind is wrong, a key given twice (schema level, no server)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.exceptions import RequestValidationError

from api.errors import MAX_REPORTED_ERRORS, validation_error_body
from api.job_requests import validate_body
from api.request_input import parse_json
from api.schemas import JobCreate
from api.spec_messages import refine_request_errors
from api.webhook_schemas import WebhookCreate


def answer(raw: str) -> dict[str, Any]:
    """The 422 body POST /v1/jobs gives for the JSON text ``raw``."""
    with pytest.raises(RequestValidationError) as caught:
        validate_body(parse_json(raw, ("body",)), JobCreate, ("body",))
    return validation_error_body(caught.value.errors())["error"]


def spec(**sections: Any) -> str:
    config = {"architecture": {"name": "small_cnn"}, "dataset": {"name": "digits"}, **sections}
    return json.dumps({"checkpoint_id": "ck_1", "config": config})


@pytest.mark.parametrize(("sections", "field", "message"), [
    # Before: "Extra inputs are not permitted", naming no setting that exists.
    ({"finetune": {"lrr": 0.01}}, "config.finetune.lrr",
     "unknown setting 'lrr'; did you mean 'lr'?"),
    ({"finetune": {"epoch": 3}}, "config.finetune.epoch",
     "unknown setting 'epoch'; did you mean 'epochs'?"),
    ({"finetun": {}}, "config.finetun", "unknown setting 'finetun'; did you mean 'finetune'?"),
    ({"attack": {"domain": {"lower": [0], "uper": [1]}}}, "config.attack.domain.upper",
     "Field required"),
    ({"mrc": {"qqq": 1}}, "config.mrc.qqq", "unknown setting 'qqq'; known: allow_negative, "),
    # Before: no suggestion, only the known names (another tool's name, no spelling away).
    ({"finetune": {"learning_rate": 0.01}}, "config.finetune.learning_rate",
     "unknown setting 'learning_rate'; did you mean 'lr'?"),
    ({"attack": {"alpha": 0.01}}, "config.attack.alpha",
     "unknown setting 'alpha'; did you mean 'step_size'?"),
    ({"mrc": {"radius": 0.1}}, "config.mrc.radius", "unknown setting 'radius'; did you mean 'eps'?"),
    ({"model": {"name": "small_cnn"}}, "config.model",
     "unknown setting 'model'; did you mean 'architecture'?"),
    # An alias pointing to no setting of the section leaves the spelling rule to answer.
    ({"interpolation": {"alpha": 0.1}}, "config.interpolation.alpha",
     "unknown setting 'alpha'; did you mean 'alpha_step'?"),
    # Before: "Input should be a valid number" for "0.01", "a valid integer" for 2.0.
    ({"finetune": {"lr": "0.01"}}, "config.finetune.lr",
     'Input should be a valid number; got the text "0.01" (write numbers without quotes)'),
    ({"finetune": {"epochs": 2.0}}, "config.finetune.epochs",
     "Input should be a valid integer; got the number 2.0 (write 2)"),
    ({"finetune": {"epochs": 2.5}}, "config.finetune.epochs",
     "Input should be a valid integer; got the number 2.5"),
    ({"finetune": {"lr": 20}}, "config.finetune.lr",
     "Input should be less than or equal to 10; got the number 20"),
    ({"dataset": {"name": "Digits"}}, "config.dataset.name",
     'got the text "Digits"; did you mean \'digits\'?'),
    # Before: the choices listed, none suggested.
    ({"dataset": {"name": "cifar-10"}}, "config.dataset.name",
     'got the text "cifar-10"; did you mean \'cifar10\'?'),
    ({"dataset": {"name": "CIFAR_100"}}, "config.dataset.name", "did you mean 'cifar100'?"),
    ({"finetune": None}, "config.finetune", "Input should be an object; got null"),
    # Before: "Input should be a valid number; got the number 1358…", for a number.
    ({"finetune": {"lr": 2**1100}}, "config.finetune.lr",
     "(beyond the range of a 64-bit floating-point number)"),
    # Before: the name member's "Input should be 'auto', 'unit' or 'none'" came first.
    ({"attack": {"domain": {"lower": [1], "upper": [0]}}}, "config.attack.domain.lower",
     "config.attack.domain.lower: every 'lower' bound must be <= its 'upper' bound"),
    ({"attack": {"domain": "box"}}, "config.attack.domain",
     "config.attack.domain: Input should be 'auto', 'unit' or 'none'; got the text \"box\""),
    # Before: the section ("config.architecture") for a check about one of its settings.
    ({"architecture": {"name": "small_cnn", "mean": [0.5]}}, "config.architecture.std",
     "give both 'mean' and 'std', or neither"),
    ({"architecture": {"name": "small_cnn", "mean": [0.5, 0.5], "std": [0.2]}},
     "config.architecture.std", "'mean' and 'std' must have the same length"),
    # Before: accepted, and mrc.steps silently replaced by the protocol's 10.
    ({"protocol": "reference", "mrc": {"steps": 3}}, "config.mrc.steps",
     "protocol 'reference' sets mrc.steps to 10; leave mrc.steps out, or use protocol 'default'"),
    ({"protocol": "reference", "interpolation": {"alpha_step": 0.05}},
     "config.interpolation.alpha_step", "sets interpolation.alpha_step to 0.1"),
    # Before: accepted; [5, 5] decayed the rate twice after epoch 5.
    ({"finetune": {"lr_milestones": [5, 5]}}, "config.finetune.lr_milestones",
     "in increasing order, each once"),
    # Before: accepted; the module was listed twice.
    ({"mrc": {"modules": ["conv1", "conv1"]}}, "config.mrc.modules",
     "each module may appear once; repeated: ['conv1']"),
    # Before: field "config.mrc.module_batch.constrained-int" (pydantic's union member tag, no
    # field of the request) and each member's own refusal ("Input should be 'auto'").
    ({"mrc": {"module_batch": 0}}, "config.mrc.module_batch",
     "config.mrc.module_batch: 'auto' or a whole number of modules from 1 to 64; got the number 0"),
    ({"mrc": {"module_batch": 65}}, "config.mrc.module_batch", "from 1 to 64; got the number 65"),
    ({"mrc": {"module_batch": "AUTO"}}, "config.mrc.module_batch", "did you mean 'auto'?"),
    ({"mrc": {"module_batch": 2.0}}, "config.mrc.module_batch", "write 2"),
    # Before: accepted, and lr never used (the grid's rates are the ones run).
    ({"finetune": {"lr": 0.1, "lr_grid": [0.01, 0.05]}}, "config.finetune.lr",
     "'lr_grid' sets the rates that are run and 0.1 is not among them"),
    # Before: the choices listed, none suggested (too short for the similarity ratio).
    ({"interpolation": {"selection_split": "val"}}, "config.interpolation.selection_split",
     'got the text "val"; did you mean \'validation\'?'),
    ({"protocol": "ref"}, "config.protocol", 'got the text "ref"; did you mean \'reference\'?'),
    # Before: "(write numbers without quotes)" too, for text JSON cannot write as a number
    # (and for mrc.p, whose 'inf' is text).
    ({"mrc": {"p": "INF"}}, "config.mrc.p", 'got the text "INF"; did you mean \'inf\'?'),
    # Before: accepted and stored as 2 (a Literal matches 2.0 by equality, even in a strict
    # parse), where every integer setting refuses 2.0; the order of the norm is the integer 2.
    ({"mrc": {"p": 2.0}}, "config.mrc.p", "Input should be 2 or 'inf'; got the number 2.0 (write 2)"),
    ({"mrc": {"p": 1}}, "config.mrc.p", "Input should be 2 or 'inf'; got the number 1"),
    ({"attack": {"norm": "inf"}}, "config.attack.norm",
     'got the text "inf"; did you mean \'linf\'?'),
    # Before: "this service requires at least 8" (the service's bound, checked first), and 8.0
    # was then refused with "write 8".
    ({"finetune": {"batch_size": 3.5}}, "config.finetune.batch_size",
     "Input should be a valid integer; got the number 3.5"),
    ({"mrc": {"batch_size": 4.0}}, "config.mrc.batch_size",
     "Input should be a valid integer; got the number 4.0 (write 4)"),
])
def test_a_wrong_setting_says_what_to_write(sections: dict[str, Any], field: str,
                                            message: str) -> None:
    error = answer(spec(**sections))
    assert error["field"] == field, error
    assert message in error["message"], error["message"]
    assert "Extra inputs" not in error["message"] and "Value error" not in error["message"]


def test_the_protocols_own_values_may_be_given() -> None:
    config = {"architecture": {"name": "small_cnn"}, "dataset": {"name": "digits"},
              "protocol": "reference", "mrc": {"steps": 10, "split": "test"}}
    body = validate_body(parse_json(json.dumps({"checkpoint_id": "ck_1", "config": config}),
                                    ("body",)), JobCreate, ("body",))
    assert body.config.mrc.steps == 10 and body.config.interpolation.alpha_step == 0.1
    # A stored config (every setting written out) reads back as it was.
    again = type(body.config).model_validate(body.config.model_dump())
    assert again == body.config


def test_an_lr_among_the_grids_rates_may_be_given() -> None:
    config = {"architecture": {"name": "small_cnn"}, "dataset": {"name": "digits"},
              "finetune": {"lr": 0.01, "lr_grid": [0.01, 0.05]}}
    body = validate_body(parse_json(json.dumps({"checkpoint_id": "ck_1", "config": config}),
                                    ("body",)), JobCreate, ("body",))
    assert body.config.finetune.lr_grid == [0.01, 0.05]


def test_an_object_or_list_is_never_echoed() -> None:
    error = answer(spec(finetune={"lr": {"secret": "x" * 50}}))
    assert error["field"] == "config.finetune.lr" and "secret" not in error["message"]


@pytest.mark.parametrize(("raw", "field"), [
    # Before: accepted, the last value silently kept (the job ran at lr 0.2).
    ('{"checkpoint_id": "ck_1", "config": {"architecture": {"name": "small_cnn"}, '
     '"dataset": {"name": "digits"}, "finetune": {"lr": 0.1, "lr": 0.2}}}',
     "config.finetune.lr"),
    ('{"checkpoint_id": "a", "checkpoint_id": "b", "config": {}}', "checkpoint_id"),
])
def test_a_key_given_twice_is_refused_naming_it(raw: str, field: str) -> None:
    error = answer(raw)
    assert error["field"] == field
    assert "given more than once" in error["message"]


def test_a_number_too_long_to_read_gives_no_python_advice() -> None:
    error = answer('{"checkpoint_id": "ck_1", "config": {"seed": ' + "9" * 5000 + "}}")
    assert error["field"] == "body" and "more than 4300 digits" in error["message"]
    assert "sys." not in error["message"]


def test_a_choice_far_from_every_one_suggests_none() -> None:
    error = answer(spec(attack={"domain": "box"}))
    assert "did you mean" not in error["message"]
    assert "'auto', 'unit' or 'none'" in error["message"]


def test_a_bad_label_key_names_the_key() -> None:
    # Before: field "labels.é.[key]" (pydantic's mark for a mapping's key).
    body = json.loads(spec())
    body["labels"] = {"é": "x"}
    error = answer(json.dumps(body))
    assert error["field"] == "labels.é", error


@pytest.mark.parametrize("text", ["inf", "-Infinity", "NaN", "1e999"])
def test_text_json_cannot_write_as_a_number_is_not_told_to_drop_its_quotes(text: str) -> None:
    # Before: "(write numbers without quotes)", which sent the user to a JSON syntax error or
    # to "Input should be a finite number".
    error = answer(spec(finetune={"lr": text}))
    assert error["field"] == "config.finetune.lr"
    assert f'got the text "{text}"' in error["message"]
    assert "without quotes" not in error["message"], error["message"]


def test_an_infinite_count_is_refused_as_no_integer() -> None:
    # Before: "this service allows at most 200" for 1e999 steps (JSON's overflowing number).
    error = answer(spec(attack={"steps": "STEPS"}).replace('"STEPS"', "1e999"))
    assert error["field"] == "config.attack.steps"
    assert "Input should be a valid integer; got the number inf" in error["message"], error


def test_a_whole_number_within_the_services_bounds_still_meets_them() -> None:
    # Skipping the bound for a float left it to the schema; a whole int is bounded as before.
    error = answer(spec(mrc={"batch_size": 4}))
    assert error["field"] == "config.mrc.batch_size"
    assert "this service requires at least 8" in error["message"]


def test_a_bound_and_a_mistyped_key_are_named_in_one_answer() -> None:
    # Before: the service's bound alone ("config.finetune.epochs"); the typo came in the next
    # answer, once the bound was met.
    error = answer(spec(finetune={"epochs": 500, "lrr": 0.01}))
    assert error["field"] == "config.finetune.epochs"
    assert error["fields"] == ["config.finetune.epochs", "config.finetune.lrr"], error
    assert "this service allows at most 200" in error["message"]
    assert "did you mean 'lr'?" in error["message"]


def test_a_field_past_both_bounds_is_named_once_with_the_services() -> None:
    # 2000 is past the library's 1000 and the service's 200: the tighter, the service's, is said.
    error = answer(spec(attack={"steps": 2000}))
    assert error["fields"] == ["config.attack.steps"], error
    assert "this service allows at most 200" in error["message"]
    assert "1000" not in error["message"], error["message"]


def test_only_the_errors_an_answer_reports_are_worded() -> None:
    # 40,000 unknown keys fit in a 1 MiB body; each was worded (a "did you mean" search) and
    # encoded before the answer kept its first 50: 6 s of an API worker for one request.
    keys = {f"setting{i}": 1 for i in range(1000)}
    with pytest.raises(RequestValidationError) as caught:
        validate_body(parse_json(json.dumps({"checkpoint_id": "ck_1", "config": keys}),
                                 ("body",)), JobCreate, ("body",))
    errors = caught.value.errors()
    assert len(errors) == MAX_REPORTED_ERRORS
    assert "unknown setting 'setting0'" in validation_error_body(errors)["error"]["message"]
    webhook = [{"type": "extra_forbidden", "loc": ("body", f"x{i}"), "msg": "Extra inputs",
                "input": 1} for i in range(1000)]
    assert len(refine_request_errors(webhook, WebhookCreate)) == MAX_REPORTED_ERRORS
