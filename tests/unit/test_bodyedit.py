"""Rewriting ``model`` changes those bytes only; ambiguous bodies are never touched."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc.bodyedit import (
    _MAX_UNPARSED_CONTAINERS,
    _too_many_containers,
    find_model_span,
    replace_model,
    rewrite_model,
)

CASES = [
    pytest.param(b'{"model":"auto"}', b'{"model":"m"}', id="minimal"),
    pytest.param(b'{ "model" :  "auto" , "x":1.0}', b'{ "model" :  "m" , "x":1.0}', id="whitespace-kept"),
    pytest.param(
        b'{"n":[1.0,1e5,-0.0,12345678901234567890],"model":"auto"}',
        b'{"n":[1.0,1e5,-0.0,12345678901234567890],"model":"m"}',
        id="numbers-untouched",
    ),
    pytest.param(
        b'{"tools":[{"model":"inner"}],"model":"auto","role":"model"}',
        b'{"tools":[{"model":"inner"}],"model":"m","role":"model"}',
        id="nested-model-key-and-value-kept",
    ),
    pytest.param(b'{"mod\\u0065l":"auto","t":"\\u00e9"}', b'{"mod\\u0065l":"m","t":"\\u00e9"}', id="escaped-key"),
    pytest.param(
        b'{"\\u006d\\u006f\\u0064\\u0065\\u006c" :\n"auto"}',
        b'{"\\u006d\\u006f\\u0064\\u0065\\u006c" :\n"m"}',
        id="every-letter-escaped",
    ),
    pytest.param(
        b'{"messages":[{"content":"say \\"model\\": \\"x\\""}],"model":"auto"}',
        b'{"messages":[{"content":"say \\"model\\": \\"x\\""}],"model":"m"}',
        id="model-inside-a-string",
    ),
    pytest.param(b'{"model":"a\\"uto","v":"\xc3\xa9"}', b'{"model":"m","v":"\xc3\xa9"}', id="escaped-value-utf8"),
]


@pytest.mark.parametrize(("raw", "want"), CASES)
def test_replace_model(raw: bytes, want: bytes) -> None:
    assert replace_model(raw, "m") == want


@pytest.mark.parametrize(("raw", "want"), CASES)
def test_rewrite_reports_the_new_value_span(raw: bytes, want: bytes) -> None:
    """The span is what Envoy's fallback filter swaps: exactly the new value's bytes, quotes included."""
    rewritten = rewrite_model(raw, "gpt-4o-mini")
    assert rewritten is not None
    body, (start, end) = rewritten
    assert body[start:end] == b'"gpt-4o-mini"'
    assert body[:start] + b'"m"' + body[end:] == want


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b'{"model":"a","model":"b"}', id="duplicate-key"),
        pytest.param(b'{"model":null}', id="not-a-string"),
        pytest.param(b'{"x":"\\u0041","model":1}', id="slow-path-not-a-string"),
    ],
)
def test_ambiguous_or_missing_is_left_alone(raw: bytes) -> None:
    assert replace_model(raw, "m") is None


@pytest.mark.parametrize(("raw", "want"), CASES)
def test_replace_model_in_a_large_body(raw: bytes, want: bytes) -> None:
    """Past a few KiB the model is found by the numpy pass, not the token walk: the same bytes change."""
    pad = b',"pad":"' + b"x" * 5000 + b'"}'
    assert replace_model(raw[:-1] + pad, "m") == want[:-1] + pad


@pytest.mark.parametrize(("raw", "want"), CASES)
def test_a_body_nobody_parsed_finds_the_same_model(raw: bytes, want: bytes) -> None:
    assert find_model_span(raw, parsed=False) == find_model_span(raw)


@pytest.mark.parametrize(
    ("raw", "found"),
    [
        pytest.param(b'{"model":"auto","m":"\\ud83d"}', True, id="lone-surrogate"),
        pytest.param(b'\xef\xbb\xbf {"model":"auto"}', True, id="byte-order-mark"),
        pytest.param(b'{"t":1e400,"model":"auto"}', True, id="number-past-double"),
        pytest.param(b'{"\\ud83d":1,"model":"auto"}', True, id="key-the-parser-refuses"),
        pytest.param(b'{"messages":[],"metadata":{"model":"auto"}}', False, id="only-nested"),
        pytest.param(b'[{"model":"auto"}]', False, id="an-array"),
        pytest.param(b'{"model":"auto","messages":[', False, id="cut-short"),
        pytest.param(b'{"model":"auto","x":"a}', False, id="string-left-open"),
        pytest.param(b'{"model":"auto"}{}', False, id="two-values"),
        pytest.param(b'x{"model":"auto"}', False, id="junk-before"),
        pytest.param(b'{"model":"auto"} x', False, id="junk-after"),
        pytest.param(b"", False, id="empty"),
        pytest.param(b'{"model":"auto"}{{}', False, id="a-second-value-left-open"),
        pytest.param(b'{"model":"auto","x":[{]}}', False, id="brackets-crossed"),
        pytest.param(b'{"model":"auto", // c\n "m":[]}', False, id="line-comment"),
        pytest.param(b'{/* "model":"x" */ "m":"auto"}', False, id="block-comment"),
        pytest.param(b'{"a":"b"\\,"model":"auto"}', False, id="backslash-outside-a-string"),
        pytest.param(b'{"a" "model":"auto"}', False, id="key-without-comma"),
        pytest.param(b'{"model":\x0c"auto"}', False, id="form-feed-is-not-json-whitespace"),
        pytest.param(b'{"model":1,"x":"auto"}', False, id="not-a-string"),
        pytest.param(b'{"t":NaN,"model" : \r\n"auto"}', True, id="nan-and-json-whitespace"),
        pytest.param(b'{"model":"' + b'\\"' * 1000 + b'"}', True, id="a-run-of-escaped-quotes"),
    ],
)
def test_a_body_nobody_parsed_must_be_one_whole_object(raw: bytes, found: bool) -> None:
    """Without a parse, the fast path's premise (the only "model" is the top-level key) does not hold."""
    assert (find_model_span(raw, parsed=False) is not None) is found


def test_new_value_is_json_escaped() -> None:
    assert orjson.loads(replace_model(b'{"model":"auto"}', 'we"ird\n') or b"") == {"model": 'we"ird\n'}


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@given(
    extra=st.dictionaries(st.text(max_size=8), json_values, max_size=6), new=st.text(max_size=30), large=st.booleans()
)
def test_any_body_changes_only_model(extra: dict[str, object], new: str, large: bool) -> None:
    """``large``: past a few KiB, a body with a nested "model" or a ``\\u`` escape takes the numpy pass."""
    body = {k: v for k, v in extra.items() if k != "model"}
    body["model"] = "auto"
    if large:
        body["\x00pad"] = "x" * 5000  # a control character: orjson writes it as a \u escape
    raw = orjson.dumps(body)
    out = replace_model(raw, new)
    assert out is not None
    assert orjson.loads(out) == {**body, "model": new}
    prefix_end = raw.index(b'"model":"auto"') + len(b'"model":')
    assert out.startswith(raw[:prefix_end]) and out.endswith(raw[prefix_end + len(b'"auto"') :])


@given(body=st.dictionaries(st.text(max_size=8), json_values, max_size=6), indent=st.booleans())
def test_a_body_nobody_parsed_agrees_with_the_parser(body: dict[str, object], indent: bool) -> None:
    """Any JSON object, escapes and nested "model" keys included: the top-level model string if there is one."""
    raw = orjson.dumps(body, option=orjson.OPT_INDENT_2 if indent else 0)
    span = find_model_span(raw, parsed=False)
    if isinstance(body.get("model"), str):
        assert span is not None and orjson.loads(raw[span[0] : span[1]]) == body["model"]
    else:
        assert span is None


@pytest.mark.parametrize("size", [8 << 10, 4 << 20])
def test_a_body_nobody_parsed_is_read_in_linear_time(size: int) -> None:
    """An unterminated run of escaped quotes made a token walk retry at every quote (32 KiB took seconds). Not a
    timing test: a quadratic walk would run for hours on the 4 MiB body instead of coming back."""
    raw = b'{"model":"auto","x":"' + b'\\"' * (size // 2)
    assert find_model_span(raw, parsed=False) is None
    assert find_model_span(raw + b'"}', parsed=False) == (9, 15)


@pytest.mark.parametrize(
    ("containers", "found"),
    [
        pytest.param(_MAX_UNPARSED_CONTAINERS - 10, True, id="under-the-cap"),
        pytest.param(1_400_000, False, id="a-4-mib-body-of-empty-arrays"),
    ],
)
def test_a_body_nobody_parsed_with_too_many_containers_is_not_read(containers: int, found: bool) -> None:
    """Matching 1.4 million brackets held the event loop 0.3 s (past Envoy's message timeout, stalling every other
    stream): past the cap the body is left untouched. Not a timing test: the found/not-found answer is the contract."""
    raw = b'{"model":"auto","messages":[{"role":"user","content":"hi"}],"x":[' + b"[]," * containers + b"[]]}"
    assert (find_model_span(raw, parsed=False) == (9, 15)) is found


def test_brackets_inside_strings_do_not_count_against_the_cap() -> None:
    """A token count of a prompt full of braces (code, JSON samples) is read whatever their number."""
    text = b'{\\"a\\": [' * (_MAX_UNPARSED_CONTAINERS // 2 + 10)
    raw = b'{"model":"auto","messages":[{"role":"user","content":"' + text + b'"}]}'
    assert raw.count(b"{") + raw.count(b"[") > _MAX_UNPARSED_CONTAINERS
    assert find_model_span(raw, parsed=False) == (9, 15)


@given(st.binary(max_size=80).map(lambda b: bytes(b'{["ab\\ '[x % 7] for x in b)), st.integers(0, 12))
def test_containers_are_counted_outside_strings_as_json_reads_them(raw: bytes, cap: int) -> None:
    """The count against the cap agrees with a byte-by-byte reading: escapes first, then quotes toggle strings."""
    plain, inside, outside = raw.replace(b"\\\\", b"__").replace(b'\\"', b"__"), False, 0
    for byte in plain:
        inside = not inside if byte == ord('"') else inside
        outside += byte in b"{[" and not inside
    assert _too_many_containers(raw, cap) is (outside > cap)


@pytest.mark.parametrize(
    ("tail", "found"),
    [
        pytest.param(b"", True, id="one-model"),
        pytest.param(b',"model":"x"', False, id="a-second-model"),
        pytest.param(b',"m":{"model":"x"}', True, id="a-nested-model"),
    ],
)
@pytest.mark.parametrize("strings", [10, 1_000_000])
def test_a_body_with_escapes_is_read_whatever_its_size(strings: int, tail: bytes, found: bool) -> None:
    """A ``\\u`` escape rules out the fast path; a token walk over a million strings took seconds (it gave up at
    200,000 tokens), the numpy pass reads a body past a few KiB in linear time."""
    raw = b'{"model":"auto","messages":[{"role":"user","content":"caf\\u00e9"}],"x":[' + b",".join([b'"a"'] * strings)
    raw += b"]" + tail + b"}"
    assert orjson.loads(raw)["model"] in ("auto", "x")
    assert (replace_model(raw, "gpt-4o") is not None) is found
    assert (find_model_span(raw) == (9, 15)) is found
