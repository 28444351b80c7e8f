"""Hostile and malformed bodies: never a crash, never a changed byte outside ``model``, one answer per message.

The corpus in ``tests/corpus/`` holds one file per kind of bad input; hypothesis adds random bodies and mutations.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extproc.bodyedit import find_model_span
from extproc.config import LimitSettings, OverrideSettings, SecuritySettings
from extproc.request import PassReason, Passthrough, json_containers, json_depth_exceeds, parse_request
from extproc.schemas import SCHEMAS_BY_PATH
from extproc.stream import StreamHandler
from tests.fakes import RecordingSink, demo_settings, inline_classify, sequential_ids, snapshot
from tests.protocol import chat_headers, forwards_unchanged, replay

CORPUS = sorted((Path(__file__).resolve().parents[1] / "corpus").glob("*.json"))


def _handler(**settings_changes: object) -> tuple[StreamHandler, RecordingSink]:
    sink = RecordingSink()
    base = demo_settings()
    snap = snapshot(settings=base.model_copy(update=settings_changes) if settings_changes else base)
    return StreamHandler(snap, inline_classify, sink, sequential_ids()), sink


def _check_safe(raw: bytes, responses: list[pb.ProcessingResponse]) -> None:
    """Exactly one answer per message; a body answer is either "unchanged" or a model-only rewrite."""
    assert len(responses) == 2
    assert responses[0].WhichOneof("response") == "request_headers"
    body_answer = responses[1]
    assert body_answer.WhichOneof("response") == "request_body"
    if forwards_unchanged(body_answer):
        return
    common = body_answer.request_body.response
    if not common.HasField("body_mutation"):  # a catalog model named by the client: only the route changes
        assert [h.header.key for h in common.header_mutation.set_headers] == ["x-model-router-cluster"]
        return
    new = common.body_mutation.body
    span = find_model_span(raw)
    assert span is not None, "a body was rewritten although it has no single top-level model string"
    start, end = span
    assert new[:start] == raw[:start] and new[len(new) - (len(raw) - end) :] == raw[end:]
    assert isinstance(orjson.loads(new[start : len(new) - (len(raw) - end)]), str)
    lengths = [h.header.raw_value for h in common.header_mutation.set_headers if h.header.key == "content-length"]
    assert lengths == [str(len(new)).encode()]


@pytest.mark.parametrize("api", sorted(SCHEMAS_BY_PATH))
@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
async def test_corpus_is_safe(path: Path, api: str) -> None:
    raw = path.read_bytes()
    handler, sink = _handler()
    responses = await replay(handler, chat_headers(path=api), raw)
    _check_safe(raw, responses)
    assert sink.records and not sink.errors


PASS, FALLBACK, ROUTED = "passthrough", "fallback", "routed"
EXPECTED = {
    "bom": (PASS, PassReason.INVALID_JSON),
    "comment": (PASS, PassReason.INVALID_JSON),
    "content_number": (FALLBACK, "no_prompt_text"),
    "content_parts_image_only": (FALLBACK, "no_prompt_text"),
    "content_parts_unknown": (FALLBACK, "no_prompt_text"),
    "deep_nesting_200": (PASS, PassReason.TOO_DEEP),
    "deep_nesting_2000": (PASS, PassReason.TOO_DEEP),  # past orjson's own 1,024
    "duplicate_messages": (ROUTED, "cheapest_meeting_target"),
    "duplicate_model": (PASS, PassReason.MODEL_NOT_ROUTABLE),  # orjson keeps the last one: gpt-4o
    "empty": (PASS, PassReason.INVALID_JSON),
    "escaped_model_key": (ROUTED, "cheapest_meeting_target"),
    "huge_number": (PASS, PassReason.INVALID_JSON),
    "huge_string": (ROUTED, "cheapest_meeting_target"),
    "invalid_utf8": (PASS, PassReason.INVALID_JSON),
    "lone_surrogate_escape": (PASS, PassReason.INVALID_JSON),
    "many_messages": (PASS, PassReason.TOO_MANY_MESSAGES),
    "max_tokens_wrong_type": (ROUTED, "cheapest_meeting_target"),  # the default output estimate instead
    "message_not_object": (FALLBACK, "no_prompt_text"),
    "messages_object": (FALLBACK, "no_prompt_text"),
    "messages_string": (FALLBACK, "no_prompt_text"),
    "model_array": (PASS, PassReason.NO_MODEL),
    "model_bool": (PASS, PassReason.NO_MODEL),
    "model_null": (PASS, PassReason.NO_MODEL),
    "model_number": (PASS, PassReason.NO_MODEL),
    "model_object": (PASS, PassReason.NO_MODEL),
    "model_with_escapes": (ROUTED, "cheapest_meeting_target"),
    "nan_literal": (PASS, PassReason.INVALID_JSON),
    "null": (PASS, PassReason.NOT_AN_OBJECT),
    "role_missing": (FALLBACK, "no_prompt_text"),
    "single_quotes": (PASS, PassReason.INVALID_JSON),
    "stream_not_bool": (ROUTED, "cheapest_meeting_target"),
    "top_level_array": (PASS, PassReason.NOT_AN_OBJECT),
    "top_level_string": (PASS, PassReason.NOT_AN_OBJECT),
    "trailing_garbage": (PASS, PassReason.INVALID_JSON),
    "truncated": (PASS, PassReason.INVALID_JSON),
    "truncated_in_string": (PASS, PassReason.INVALID_JSON),
    "two_documents": (PASS, PassReason.INVALID_JSON),
    "whitespace": (PASS, PassReason.INVALID_JSON),
}
"""What each corpus body gets on the chat path: a pass-through reason, a fallback to the requested/default model
with nothing to classify, or a routing decision."""
READ_ELSEWHERE = {"bom", "huge_number", "invalid_utf8", "lone_surrogate_escape", "nan_literal"}
"""Bodies orjson refuses that are one whole object of JSON's own bytes with a top-level "auto" (other parsers read
some of them): sent as without the router, the default model, as Envoy's fail-open filter sends them. A comment is
not JSON's: parsers that take comments differ, so that body is forwarded as it came."""


def test_every_corpus_file_has_an_expected_outcome() -> None:
    assert sorted(EXPECTED) == [p.stem for p in CORPUS]


@pytest.mark.parametrize("name", sorted(EXPECTED))
async def test_corpus_outcome_and_reason(name: str) -> None:
    handler, sink = _handler()
    responses = await replay(handler, chat_headers(), (CORPUS[0].parent / f"{name}.json").read_bytes())
    outcome, reason = EXPECTED[name]
    assert (sink.records[0].outcome.value, sink.records[0].reason) == (outcome, str(reason))
    renamed = reason in (PassReason.TOO_DEEP, PassReason.TOO_MANY_MESSAGES) or name in READ_ELSEWHERE
    assert (forwards_unchanged(responses[1])) is (outcome == PASS and not renamed)
    assert (sink.records[0].selected_model == "gpt-4o") if renamed else True


_MESSAGES = orjson.dumps({"model": "auto", "messages": [{"role": "user", "content": "x"}] * 3})
_CONTAINERS = orjson.dumps({"model": "auto", "messages": [{"role": "user", "content": "x"}], "x": [[]] * 99})
_ESCAPED = rb'"\u0061uto"'  # "auto", escaped: what the upstream reads is the alias
_NESTED = _MESSAGES.replace(b'"auto"', _ESCAPED).replace(b'[{"role"', b'[{"model":"auto","role"')


@pytest.mark.parametrize(
    ("limits", "body", "reason", "want"),
    [
        pytest.param(
            LimitSettings(max_json_depth=4),
            b'{"model":"auto","a":[[[[1]]]]}',
            "json_too_deep",
            b'{"model":"gpt-4o","a":[[[[1]]]]}',
            id="depth",
        ),
        pytest.param(
            LimitSettings(max_messages=2),
            _MESSAGES,
            "too_many_messages",
            _MESSAGES.replace(b'"auto"', b'"gpt-4o"'),
            id="messages",
        ),
        pytest.param(
            LimitSettings(max_body_bytes=10), b'{"model":"auto","messages":[]}', "body_too_large", None, id="size"
        ),
        pytest.param(
            LimitSettings(max_body_bytes=10),
            b'{"model":"gpt-4o-mini","messages":[]}',
            "body_too_large",
            b"",  # unchanged, to its own cluster (a 404 from the default route's provider otherwise)
            id="size-catalog-model",
        ),
        pytest.param(
            LimitSettings(max_json_containers=100),
            _CONTAINERS,
            "json_too_complex",
            _CONTAINERS.replace(b'"auto"', b'"gpt-4o"'),
            id="containers",
        ),
        pytest.param(
            LimitSettings(max_json_containers=100),
            _CONTAINERS.replace(b'"auto"', b'"gpt-4o-mini"'),
            "json_too_complex",
            b"",  # unchanged, to its own cluster
            id="containers-catalog-model",
        ),
        pytest.param(
            LimitSettings(max_json_containers=100),
            _CONTAINERS.replace(b'"auto"', b'"other-vendor-model"'),
            "json_too_complex",
            None,
            id="containers-foreign-model",
        ),
        pytest.param(
            LimitSettings(max_messages=2),
            _NESTED,
            "too_many_messages",
            _NESTED.replace(_ESCAPED, b'"gpt-4o"'),
            id="escaped-alias-beside-nested-model-keys",
        ),
        pytest.param(
            LimitSettings(),
            b'{"model":"gpt-4o","model":"auto","messages":[{"role":"user","content":"x"}]}',
            "ambiguous_model",
            None,
            id="duplicate-model-last-routable",
        ),
    ],
)
async def test_configurable_limits(limits: LimitSettings, body: bytes, reason: str, want: bytes | None) -> None:
    """Over a limit the body is not classified. A routable alias becomes the default model (sent as "auto", no
    upstream would serve it), a catalog model goes to its cluster (``want`` empty); every other byte stays as sent."""
    handler, sink = _handler(limits=limits)
    responses = await replay(handler, chat_headers(), body)
    (record,) = sink.records
    assert (record.outcome.value, record.reason) == (PASS, reason)
    if want is None:
        assert forwards_unchanged(responses[1]) and record.selected_model is None
        return
    _check_safe(body, responses)
    if not want:
        assert not responses[1].request_body.response.HasField("body_mutation")
        assert (record.selected_model, record.cluster) == ("gpt-4o-mini", "cheap")
        return
    assert responses[1].request_body.response.body_mutation.body == want
    assert (record.requested_model, record.selected_model, record.cluster) == ("auto", "gpt-4o", "frontier")


@pytest.mark.parametrize(
    ("raw", "exceeds"),
    [
        (b'{"a":[[],{}]}', False),  # 4 containers
        (b'{"a":[[],{},[]]}', True),
        (b'{"a":"[[[[{{{{","b":[]}', False),  # brackets inside strings are not containers
        (b'{"a":"\\"[[[[","b":[]}', False),  # nor after an escaped quote
        (b'{"a":"\\\\","b":[[],[],[]]}', True),  # an escaped backslash ends the string before the quote
        (b'{{{{{"' + b'\\"' * 10_000, True),  # unterminated string: still an answer, and in linear time
        (b'{"a":"' + b"[" * 10_000, False),
    ],
)
def test_container_count_is_exact_and_ignores_strings(raw: bytes, exceeds: bool) -> None:
    assert (json_containers(raw, 4) > 4) is exceeds


def _count(value: object) -> int:
    if isinstance(value, dict):
        return 1 + sum(map(_count, value.values()))
    if isinstance(value, list):
        return 1 + sum(map(_count, value))
    return 0


_TRICKY_TEXT = st.text(alphabet='[]{}"\\/abn\u00e9\u2028', max_size=8)


@given(st.recursive(_TRICKY_TEXT, lambda c: st.lists(c, max_size=4) | st.dictionaries(_TRICKY_TEXT, c, max_size=4)))
def test_container_count_matches_a_parser_on_strings_full_of_brackets_quotes_and_escapes(doc: object) -> None:
    assert json_containers(orjson.dumps(doc), 0) == _count(doc)


def test_depth_check_is_exact() -> None:
    assert not json_depth_exceeds({"a": [{"b": []}]}, 4)
    assert json_depth_exceeds({"a": [{"b": [[]]}]}, 4)
    assert isinstance(parse_request("/v1/chat/completions", b"[]", {"auto"}), Passthrough)


SECRET = "s3cret-token"
TRUSTED = SecuritySettings(override=OverrideSettings(token_sha256=hashlib.sha256(SECRET.encode()).hexdigest()))
HARD_BODY = b'{"model":"auto","messages":[{"role":"user","content":"a hard question"}]}'


@pytest.mark.parametrize(
    ("security", "headers", "want_model", "errors"),
    [
        pytest.param(TRUSTED, {"override": "gpt-4o-mini", "override-token": SECRET}, "gpt-4o-mini", [], id="trusted"),
        pytest.param(
            TRUSTED,
            {"override": "gpt-4o-mini", "override-token": "guess"},
            "gpt-4o",
            ["untrusted_override"],
            id="bad-token",
        ),
        pytest.param(TRUSTED, {"override": "gpt-4o-mini"}, "gpt-4o", ["untrusted_override"], id="no-token"),
        pytest.param(
            SecuritySettings(),
            {"override": "gpt-4o-mini", "override-token": SECRET},
            "gpt-4o",
            ["untrusted_override"],
            id="overrides-disabled",
        ),
        pytest.param(
            TRUSTED,
            {"override": "no-such-model", "override-token": SECRET},
            "gpt-4o",
            ["unknown_override_model"],
            id="unknown-model",
        ),
    ],
)
async def test_model_override_only_when_trusted(
    security: SecuritySettings, headers: dict[str, str], want_model: str, errors: list[str]
) -> None:
    handler, sink = _handler(security=security)
    extra = {f"x-model-router-{k}": v for k, v in headers.items()}
    responses = await replay(handler, chat_headers(**extra), HARD_BODY)
    assert sink.records[0].selected_model == want_model
    assert sink.errors == errors
    removed = set(responses[0].request_headers.response.header_mutation.remove_headers)
    assert removed == set(extra), "override headers never reach the upstream"


json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_any = st.recursive(
    json_leaf,
    lambda c: (
        st.lists(c, max_size=4)
        | st.dictionaries(
            st.sampled_from(["model", "messages", "role", "content", "type", "text", "x"]) | st.text(max_size=5),
            c,
            max_size=4,
        )
    ),
    max_leaves=25,
)
chat_like = st.fixed_dictionaries(
    {"model": st.sampled_from(["auto", "router", "gpt-4o"]) | json_leaf, "messages": json_any},
    optional={"stream": json_any, "max_tokens": json_any, "tools": json_any},
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(body=chat_like | json_any)
async def test_random_json_bodies_are_safe(body: object) -> None:
    raw = orjson.dumps(body)
    handler, sink = _handler()
    _check_safe(raw, await replay(handler, chat_headers(), raw))
    assert not sink.errors


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(data=st.data())
async def test_mutated_bytes_are_safe(data: st.DataObject) -> None:
    base = bytearray(data.draw(st.sampled_from([p.read_bytes() for p in CORPUS if p.stat().st_size < 2000])))
    for _ in range(data.draw(st.integers(1, 4))):
        if not base:
            break
        i = data.draw(st.integers(0, len(base) - 1))
        op = data.draw(st.sampled_from(["flip", "cut", "dup"]))
        if op == "flip":
            base[i] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del base[i:]
        else:
            base[i:i] = base[i : i + 8]
    raw = bytes(base)
    handler, sink = _handler()
    _check_safe(raw, await replay(handler, chat_headers(), raw))
    assert not sink.errors
