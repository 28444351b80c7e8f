"""A fake judge model speaking the OpenAI Chat Completions API (JSON), with deterministic grades and injected faults.

The grade comes from the answer being judged: the fake upstreams answer ``answer from MODEL on cluster CLUSTER``,
and the judge looks up ``MODEL@CLUSTER``, then ``MODEL``, in its grade table (``--grade NAME=N``, repeatable);
anything else gets 1. So an answer from the wrong cluster (a fallback) grades differently from the right one, and a
test can tell a mislabel from a label. ``--fails-on WORD@MODEL`` (repeatable) gives 1 to MODEL's answers to
conversations containing WORD: an outcome that depends on the prompt, which ``model-router adapt`` can learn.

Faults are asked for in the conversation being judged (they pass through the gateway untouched), as
``JUDGE:<fault>`` or ``JUDGE:<fault>@<model>`` (only when judging that model's answer):
``http500`` (always 500), ``flaky`` (500 on the first request for this answer, then a grade), ``ratelimit`` (429
with ``Retry-After: 0`` on the first request, then a grade), ``slow`` (answers after 5 s), ``garbled`` (a reply
without a grade), ``text`` (the grade as a final ``Grade: N`` line instead of JSON).
``GET /_requests`` returns how many grading requests arrived, per fault.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import re
from collections import Counter
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

__all__ = ["grade_of", "main", "make_app"]

_ANSWER = re.compile(r"answer from (\S+) on cluster (\S+)")
_FAULT = re.compile(r"JUDGE:(\w+)(?:@(\S+))?")
_GRADES: web.AppKey[dict[str, int]] = web.AppKey("grades")
_FAILS: web.AppKey[tuple[tuple[str, str], ...]] = web.AppKey("fails")
_SEEN: web.AppKey[Counter[str]] = web.AppKey("seen")
_REQUESTS: web.AppKey[Counter[str]] = web.AppKey("requests")
SLOW_SECONDS = 5.0


def grade_of(answer_text: str, grades: Mapping[str, int]) -> int:
    """The grade for the answer that names its model and cluster; 1 if it names none in the table."""
    match = _ANSWER.search(answer_text)
    if match is None:
        return 1
    model, cluster = match.groups()
    return grades.get(f"{model}@{cluster}", grades.get(model, 1))


def _fault(conversation: str, answer_model: str | None) -> str | None:
    """The fault asked for in the conversation, if it applies to this answer's model."""
    match = _FAULT.search(conversation)
    if match is None:
        return None
    fault, only = match.groups()
    return fault if only is None or only == answer_model else None


def _completion(model: str, text: str, prompt_chars: int) -> dict[str, Any]:
    return {
        "id": "chatcmpl-judge-" + hashlib.sha256(text.encode()).hexdigest()[:16],
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_chars // 4, "completion_tokens": 6, "total_tokens": prompt_chars // 4 + 6},
    }


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    kind = "server_error" if status >= 500 else "rate_limit_exceeded"
    body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return web.json_response(body, status=status, headers=headers)


async def _grade(request: web.Request) -> web.Response:
    body = orjson.loads(await request.read())
    messages = body["messages"]
    judged = str(messages[-1]["content"])
    conversation, _, answer = judged.partition("<answer>")
    named = _ANSWER.search(answer)
    fault = _fault(conversation, named.group(1) if named else None)
    request.app[_REQUESTS][fault or "none"] += 1
    seen = request.app[_SEEN]
    key = hashlib.sha256(judged.encode()).hexdigest()
    seen[key] += 1
    grades: dict[str, int] = request.app[_GRADES]
    grade = grade_of(answer, grades)
    if named and any(word in conversation and named.group(1) == model for word, model in request.app[_FAILS]):
        grade = 1
    text = orjson.dumps({"grade": grade}).decode()
    match fault:
        case "http500":
            return _error(500, "judge configured to fail")
        case "flaky" if seen[key] == 1:
            return _error(500, "judge fails once")
        case "ratelimit" if seen[key] == 1:
            return _error(429, "slow down", {"retry-after": "0"})
        case "slow":
            await asyncio.sleep(SLOW_SECONDS)
        case "garbled":
            text = "What a lovely answer."
        case "text":
            text = f"The answer names its model, which is all I check.\nGrade: {grade}"
    return web.json_response(_completion(str(body.get("model")), text, len(judged)))


async def _requests(request: web.Request) -> web.Response:
    counts: Counter[str] = request.app[_REQUESTS]
    return web.json_response(dict(counts))


def make_app(grades: Mapping[str, int], fails_on: tuple[tuple[str, str], ...] = ()) -> web.Application:
    """The fake judge with this grade table and these (word, model) failures."""
    app = web.Application()
    app[_GRADES] = dict(grades)
    app[_FAILS] = fails_on
    app[_SEEN] = Counter()
    app[_REQUESTS] = Counter()
    app.router.add_post("/v1/chat/completions", _grade)
    app.router.add_get("/_requests", _requests)
    return app


def _grade_option(text: str) -> tuple[str, int]:
    name, sep, value = text.rpartition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=N")
    return name, int(value)


def _fails_option(text: str) -> tuple[str, str]:
    word, sep, model = text.partition("@")
    if not sep or not word or not model:
        raise argparse.ArgumentTypeError(f"{text!r}: expected WORD@MODEL")
    return word, model


def main() -> None:
    """``python -m devstack.judge --port N --grade MODEL[@CLUSTER]=N ...``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--grade", type=_grade_option, action="append", default=[])
    parser.add_argument("--fails-on", type=_fails_option, action="append", default=[], metavar="WORD@MODEL")
    args = parser.parse_args()
    app = make_app(dict(args.grade), tuple(args.fails_on))
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
