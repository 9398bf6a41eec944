"""Checking a client's schema, validating replies against it, and the corrected request."""

import pytest

from shared.llm.base import ChatMessage, ChatRequest, GenerateRequest
from shared.llm.structured import Format, check_schema, corrected, problem_with

SCHEMA = {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}


def test_a_valid_schema_passes_and_an_invalid_one_names_its_fault() -> None:
    check_schema(SCHEMA)

    with pytest.raises(ValueError, match=r"at \$\.properties\.n\.type"):
        check_schema({"properties": {"n": {"type": "integr"}}})


@pytest.mark.parametrize(("reply", "format"), [('{"n": 1}', SCHEMA), ("[1, 2]", "json")])
def test_replies_that_fit_the_format_have_no_problem(reply: str, format: Format) -> None:
    assert problem_with(reply, format) is None


@pytest.mark.parametrize(
    ("reply", "format", "problem"),
    [
        ('{"n": 1.5}', SCHEMA, "1.5 is not of type 'integer' (at $.n)"),
        ("{}", SCHEMA, "'n' is a required property (at $)"),
        ("Sure! {", "json", "the reply is not JSON ("),
        ("Sure! {", SCHEMA, "the reply is not JSON ("),
    ],
)
def test_replies_that_miss_the_format_say_why(reply: str, format: Format, problem: str) -> None:
    assert (problem_with(reply, format) or "").startswith(problem)


def test_a_corrected_chat_adds_the_reply_and_the_problem_as_turns() -> None:
    request = ChatRequest([ChatMessage("user", "count")], "m", format=SCHEMA)

    again = corrected(request, "{}", "'n' is a required property")

    assert isinstance(again, ChatRequest)
    assert again.messages[:2] == [ChatMessage("user", "count"), ChatMessage("assistant", "{}")]
    assert again.messages[2].role == "user"
    assert "'n' is a required property" in again.messages[2].content
    assert again.format == SCHEMA


def test_a_corrected_prompt_quotes_the_reply_and_the_problem() -> None:
    request = GenerateRequest("count", "m", system="be terse", format=SCHEMA)

    again = corrected(request, "{}", "'n' is a required property")

    assert isinstance(again, GenerateRequest)
    assert again.prompt.startswith("count\n\n")
    assert "{}" in again.prompt
    assert "'n' is a required property" in again.prompt
    assert (again.system, again.format) == ("be terse", SCHEMA)
