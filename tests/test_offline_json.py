"""The offline model answers JSON: `json_object` with an object, `json_schema` with a value that
validates against the schema (checked with `jsonschema` over generated schemas), the same each time."""

from __future__ import annotations

import enum
import json
from typing import Annotated, Any, Literal

import jsonschema
import msgspec
import openai
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.llm.instances import UnanswerableSchema, instance_of
from mesh.llm.transport import offline_http_client

pytestmark = pytest.mark.unit

ASK = [{"role": "system", "content": "You plan work."}, {"role": "user", "content": "Plan the work on: rate limiting"}]


def client() -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key="x", base_url="http://offline.invalid/v1", http_client=offline_http_client(),
                              max_retries=0)  # fmt: skip


def json_schema(schema: Any) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}


def ordered_pair(low: int, high: int) -> st.SearchStrategy[tuple[int, int]]:
    return st.tuples(st.integers(low, high), st.integers(0, 20)).map(lambda p: (p[0], p[0] + p[1]))


SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.text(max_size=5))
STRINGS = st.one_of(
    st.just({"type": "string"}),
    ordered_pair(0, 40).map(lambda p: {"type": "string", "minLength": p[0], "maxLength": max(p[1], 1)}),
    st.sampled_from(["date-time", "date", "email", "uri", "uuid"]).map(lambda f: {"type": "string", "format": f}),
)
NUMBERS = st.one_of(
    ordered_pair(-50, 50).map(lambda p: {"type": "integer", "minimum": p[0], "maximum": p[1]}),
    st.integers(-50, 50).map(lambda n: {"type": "integer", "exclusiveMinimum": n}),
    st.integers(-50, 50).map(lambda n: {"type": "number", "exclusiveMaximum": n}),
    st.tuples(st.integers(-50, 50), st.integers(1, 7)).map(
        lambda p: {"type": "integer", "minimum": p[0], "multipleOf": p[1]}
    ),
    ordered_pair(-50, 50).map(lambda p: {"type": "number", "exclusiveMinimum": p[0], "exclusiveMaximum": p[1] + 1}),
)
LEAVES = st.one_of(
    STRINGS, NUMBERS, st.just({"type": "boolean"}), st.just({"type": "null"}),
    st.lists(SCALARS, min_size=1, max_size=4).map(lambda values: {"enum": values}),
    SCALARS.map(lambda value: {"const": value}),
)  # fmt: skip
NAMES = st.text(alphabet="abcdefgh_", min_size=1, max_size=6)


def containers(inner: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    objects = st.dictionaries(NAMES, inner, max_size=4).flatmap(lambda props: st.builds(
        lambda required, closed: {"type": "object", "properties": props, "required": required,
                                  "additionalProperties": not closed},
        st.lists(st.sampled_from(sorted(props)), unique=True) if props else st.just([]), st.booleans()))  # fmt: skip
    arrays = st.tuples(inner, ordered_pair(0, 4)).map(lambda p: {"type": "array", "items": p[0], "minItems": p[1][0],
                                                                 "maxItems": p[1][1]})  # fmt: skip
    choices = st.lists(inner, min_size=1, max_size=3).map(lambda options: {"anyOf": options})
    return st.one_of(objects, arrays, choices)


SCHEMAS = st.recursive(LEAVES, containers, max_leaves=12)


class TestInstances:
    @settings(max_examples=300, deadline=None)
    @given(SCHEMAS, st.text(max_size=30))
    def test_any_supported_schema_gets_a_valid_value(self, schema: dict[str, Any], topic: str) -> None:
        """For any schema made of the supported keywords, the value validates, and is the same the next time."""
        value = instance_of(schema, topic=topic)
        jsonschema.Draft202012Validator(schema).validate(value)
        assert instance_of(schema, topic=topic) == value

    @settings(max_examples=100, deadline=None)
    @given(SCHEMAS, NAMES)
    def test_references_into_defs_are_followed(self, schema: dict[str, Any], name: str) -> None:
        """A schema behind `$ref: #/$defs/NAME` (and `#/definitions/NAME`) gets the value it would get inline."""
        for where in ("$defs", "definitions"):
            wrapped = {"$ref": f"#/{where}/{name}", where: {name: schema}}
            value = instance_of(wrapped, topic="t")
            jsonschema.Draft202012Validator(wrapped).validate(value)
            assert value == instance_of(schema, topic="t")

    def test_recursive_schema_ends(self) -> None:
        """A tree whose children are optional or may be empty ends after one level of recursion."""
        tree = {"$defs": {"Node": {"type": "object", "required": ["label", "children", "parent"], "properties": {
            "label": {"type": "string"}, "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}},
            "parent": {"anyOf": [{"$ref": "#/$defs/Node"}, {"type": "null"}]}}}}, "$ref": "#/$defs/Node"}  # fmt: skip
        value = instance_of(tree, topic="t")
        jsonschema.Draft202012Validator(tree).validate(value)
        assert value["children"][0]["children"] == [] and value["children"][0]["parent"] is None

    def test_strings_name_their_place(self) -> None:
        """Strings say which property and item they fill and what the prompt was about: items differ."""
        schema = {"type": "array", "minItems": 2, "uniqueItems": True, "items": {"type": "object", "properties": {
            "topic": {"type": "string"}}}}  # fmt: skip
        assert instance_of(schema, topic="queues") == [{"topic": "topic 1 of queues"}, {"topic": "topic 2 of queues"}]

    @pytest.mark.parametrize(
        "schema",
        [False, {"enum": []}, {"type": "integer", "minimum": 3, "maximum": 2}, {"$ref": "#/$defs/Missing"},
         {"$ref": "https://example.com/schema"}, {"type": "array", "minItems": 3, "maxItems": 1},
         {"$defs": {"A": {"type": "object", "required": ["a"], "properties": {"a": {"$ref": "#/$defs/A"}}}},
          "$ref": "#/$defs/A"}],
    )  # fmt: skip
    def test_unanswerable_schema_is_refused(self, schema: Any) -> None:
        """A schema that admits nothing the offline model can build is refused, never answered wrongly."""
        with pytest.raises(UnanswerableSchema):
            instance_of(schema, topic="t")


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Step(pydantic.BaseModel):
    name: str
    capability: Literal["research", "write"]
    weight: int = pydantic.Field(ge=3, le=9)
    share: float = pydantic.Field(gt=0, lt=1)
    colour: Colour
    note: str | None


class Plan(pydantic.BaseModel):
    steps: list[Step] = pydantic.Field(min_length=3)
    done: bool
    child: Plan | None


class Question(msgspec.Struct):
    topic: str
    aspect: Literal["background", "practice"]


class Questions(msgspec.Struct):
    questions: Annotated[list[Question], msgspec.Meta(min_length=1, max_length=5)]


class TestOfflineJson:
    async def test_json_object_is_an_object_about_the_prompt(self) -> None:
        """`json_object`: a JSON object that says it is offline and what the prompt was about, the same each time."""
        answers = [await client().chat.completions.create(model="m", messages=ASK,  # type: ignore[arg-type]
                                                          response_format={"type": "json_object"}) for _ in range(2)]  # fmt: skip
        content = answers[0].choices[0].message.content or ""
        assert content == answers[1].choices[0].message.content
        assert json.loads(content)["offline"] is True and json.loads(content)["topic"] == "rate limiting"

    async def test_json_schema_from_msgspec(self) -> None:
        """`json_schema` with a msgspec-made schema (refs into `$defs`) decodes into the typed struct."""
        (_,), definitions = msgspec.json.schema_components([Questions], ref_template="#/$defs/{name}")
        schema = {**definitions["Questions"], "$defs": definitions}
        answer = await client().chat.completions.create(model="m", messages=ASK,  # type: ignore[arg-type]
                                                        response_format=json_schema(schema))  # type: ignore[arg-type]  # fmt: skip
        decoded = msgspec.json.decode(answer.choices[0].message.content or "", type=Questions)
        assert decoded.questions == [Question(topic="topic 1 of rate limiting", aspect="background"),
                                     Question(topic="topic 2 of rate limiting", aspect="background")]  # fmt: skip

    async def test_sdk_parse_with_a_pydantic_model(self) -> None:
        """`chat.completions.parse(response_format=Model)`: the SDK's strict schema is answered and parsed."""
        completion = await client().chat.completions.parse(model="m", messages=ASK, response_format=Plan)  # type: ignore[arg-type]
        plan = completion.choices[0].message.parsed
        assert plan is not None and len(plan.steps) == 3 and plan.done
        assert [step.capability for step in plan.steps] == ["research"] * 3
        assert all(3 <= step.weight <= 9 and 0 < step.share < 1 for step in plan.steps)
        assert plan.child is not None and plan.child.child is None  # the recursion ends
        jsonschema.Draft202012Validator(Plan.model_json_schema()).validate(plan.model_dump(mode="json"))

    async def test_unanswerable_schema_is_a_bad_request(self) -> None:
        """A schema it cannot answer, or a malformed response_format, is the SDK's BadRequestError with the reason."""
        for response_format in (json_schema(False), {"type": "json_schema", "json_schema": "plan"}):
            with pytest.raises(openai.BadRequestError, match="cannot answer this response_format"):
                await client().chat.completions.create(model="m", messages=ASK,  # type: ignore[arg-type]
                                                       response_format=response_format)  # type: ignore[arg-type]  # fmt: skip
