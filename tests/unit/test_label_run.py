"""Labelling with an in-memory gateway and judge (httpx.MockTransport): request shape, attribution, the cost
estimate, ``--max-cost`` before and during a run, resume, and the command's options."""

from __future__ import annotations

import argparse
import asyncio
import errno
import gzip
import importlib
import io
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson
import pytest

from extproc.cli import prompt_text_of_item
from extproc.labeling.client import ChatEndpoint, ChatReply
from extproc.labeling.command import Console, run_label_command
from extproc.labeling.cost import JUDGE, Budget, Ledger, Price, estimate_run
from extproc.labeling.grading import RUBRIC
from extproc.labeling.options import add_label_parser
from extproc.labeling.progress import Progress
from extproc.labeling.records import PromptItem, RecordWriter
from extproc.labeling.retry import RetryPolicy
from extproc.labeling.run import Labeller, LabelSettings, RunStats, label_items, unattributable

CONFIG = """\
policy: {default_model: big}
catalog:
  - {name: small, cluster: small, tier: small, input_price_per_mtok: 1.0, output_price_per_mtok: 2.0}
  - {name: big, cluster: big, tier: big, input_price_per_mtok: 10.0, output_price_per_mtok: 20.0}
  - {name: mid, cluster: mid, tier: mid, input_price_per_mtok: 5.0, output_price_per_mtok: 10.0}
"""
GRADES = {"small": 4, "big": 10, "mid": 7}


class FakeApi:
    """The gateway (host ``gw``) answers "answer from MODEL" with the router's model header; the judge (host
    ``judge``) grades by the model named. Each call reports ``usage`` tokens; ``fail`` maps a model to a status."""

    def __init__(self, usage: tuple[int, int] = (1000, 500), fail: dict[str, int] | None = None) -> None:
        self.usage = usage
        self.fail = fail or {}
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        body = orjson.loads(request.content)
        if request.url.host == "gw":
            model = request.headers.get("x-model-router-override", body["model"])
            if model in self.fail:
                return httpx.Response(self.fail[model], json={"error": {"message": "no"}})
            return self.chat(f"answer from {model}", {"x-model-router-model": model})
        named = re.search(r"answer from (\w+)", body["messages"][-1]["content"])
        return self.chat(orjson.dumps({"grade": GRADES[named.group(1)] if named else 1}).decode(), {})

    def chat(self, text: str, headers: dict[str, str]) -> httpx.Response:
        usage = {"prompt_tokens": self.usage[0], "completion_tokens": self.usage[1]}
        body = {"choices": [{"message": {"role": "assistant", "content": text}}], "usage": usage}
        return httpx.Response(200, content=orjson.dumps(body), headers=headers)

    def sent_to(self, host: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.host == host]


def prompt(ident: str, text: str = "What is 2+2?") -> PromptItem:
    return PromptItem(ident, [{"role": "user", "content": text}], None, 1)


async def no_sleep(_: float) -> None:
    return None


def labeller(client: httpx.AsyncClient, settings: LabelSettings, ledger: Ledger | None = None) -> Labeller:
    limiter = asyncio.Semaphore(settings.concurrency)
    gateway = ChatEndpoint(client, "http://gw/v1", {"x-model-router-override-token": "s3cret"}, 5, limiter, float)
    judge = ChatEndpoint(client, "http://judge/v1", {"authorization": "Bearer judge-key"}, 5, limiter, float)
    return Labeller(gateway, judge, settings, ledger or Ledger({}), no_sleep, lambda: 0.0, RunStats())


async def test_pinned_requests_ask_the_alias_pin_the_model_and_keep_secrets_from_the_judge() -> None:
    api = FakeApi()
    settings = LabelSettings(models=("small", "big"), judge_model="j", pin_alias="auto", max_tokens=64)
    async with httpx.AsyncClient(transport=httpx.MockTransport(api)) as client:
        outcomes = await labeller(client, settings).label(prompt("x"))
    assert [(o.model, o.grade, o.missing) for o in outcomes] == [("small", 4.0, None), ("big", 10.0, None)]
    gateway = api.sent_to("gw")
    assert sorted(r.headers["x-model-router-override"] for r in gateway) == ["big", "small"]
    for request in gateway:
        assert orjson.loads(request.content) == {"model": "auto", "messages": prompt("x").messages, "max_tokens": 64}
    for request in api.sent_to("judge"):
        assert "x-model-router-override-token" not in request.headers
        body = orjson.loads(request.content)
        assert body["model"] == "j" and body["temperature"] == 0 and body["messages"][0]["content"] == RUBRIC


@pytest.mark.parametrize(
    ("headers", "pinned", "reason"),
    [
        pytest.param({}, False, None, id="plain-gateway"),
        pytest.param({"x-model-router-model": "m"}, True, None, id="router-confirms"),
        pytest.param({"x-model-router-model": "other"}, False, "rerouted", id="router-chose-another"),
        pytest.param({}, True, "not_pinned", id="router-absent-fail-open"),
        pytest.param({"x-envoy-attempt-count": "2"}, False, "gateway_retried", id="fallback-cluster-may-have-answered"),
        pytest.param({"x-envoy-attempt-count": "1"}, False, None, id="one-attempt"),
        pytest.param(
            {"x-model-router-model": "m", "x-envoy-attempt-count": "1", "x-model-router-fallback-model": "x"},
            True,
            "gateway_retried",
            id="ejected-cluster-skipped-in-one-attempt",
        ),
    ],
)
def test_an_answer_is_kept_only_if_it_is_the_models(headers: dict[str, str], pinned: bool, reason: str | None) -> None:
    problem = unattributable(ChatReply("a", 1, 1, headers), "m", pinned)
    assert (problem.reason if problem else None) == reason


async def test_a_4xx_is_missing_after_one_try_and_the_other_model_is_still_labelled() -> None:
    api = FakeApi(fail={"big": 400})
    settings = LabelSettings(models=("small", "big"), judge_model="j", retry=RetryPolicy(retries=3))
    async with httpx.AsyncClient(transport=httpx.MockTransport(api)) as client:
        outcomes = await labeller(client, settings).label(prompt("x"))
    assert [(o.model, o.grade, o.missing, o.transient) for o in outcomes] == [
        ("small", 4.0, None, False),
        ("big", None, "http_400", False),
    ]
    assert [orjson.loads(r.content)["model"] for r in api.sent_to("gw")].count("big") == 1


def test_estimate_uses_catalog_prices_and_the_judge_price() -> None:
    items = [prompt("a", "x" * 400), prompt("b", "y" * 400)]
    prices = {"small": Price(1.0, 2.0), "big": Price(10.0, 20.0)}
    got = estimate_run(items, ["small", "big", "unpriced"], prices, Price(0.5, 1.0), expected_output_tokens=100)
    per_item_in = (len("[user]\n") + 400) // 4 + 1 + 4  # ceil(chars / 4) + per-message overhead
    assert got.tokens["small"] == (2 * per_item_in, 200)
    assert got.costs["small"] == pytest.approx((2 * per_item_in * 1.0 + 200 * 2.0) / 1e6)
    assert got.costs["big"] == pytest.approx(10 * got.costs["small"])  # type: ignore[operator]
    assert got.unpriced == ["unpriced"]
    judge_in, judge_out = got.tokens[JUDGE]
    assert judge_in > 3 * (2 * per_item_in + 200)  # every answer graded, each with the rubric and the prompt
    assert judge_out == 3 * 2 * 20
    assert got.total == pytest.approx(sum(c for c in got.costs.values() if c is not None))


def test_ledger_prices_reported_usage_and_estimates_missing_usage() -> None:
    ledger = Ledger({"m": Price(1.0, 2.0)})
    ledger.add("m", 1_000_000, 500_000, (0, 0))
    ledger.add("m", None, None, (4_000_000, 400))
    ledger.add("free", 10, 10, (0, 0))
    assert ledger.spent["m"] == pytest.approx(1.0 + 1.0 + 1.0 + 0.0002)
    assert ledger.usage_estimated == 1
    assert ledger.total == ledger.spent["m"]


def test_budget_reserves_items_in_flight_and_stops_for_good() -> None:
    ledger = Ledger({"m": Price(1e6, 0.0)})
    budget = Budget(max_cost=1.0, ledger=ledger)
    assert budget.try_start(0.4) == 0.4 and budget.try_start(0.4) == 0.4
    assert budget.try_start(0.4) is None  # 0.8 reserved + 0.4 > 1.0
    budget.finish(0.4)
    assert budget.try_start(0.1) is None  # stopped stays stopped: no item starts after the stop
    assert Budget(max_cost=None, ledger=ledger).try_start(1e9) == 1e9


def test_budget_expects_the_actual_cost_per_item_once_items_have_finished() -> None:
    ledger = Ledger({"m": Price(1.0, 0.0)})
    budget = Budget(max_cost=1.0, ledger=ledger)
    reserved = budget.try_start(0.01)
    assert reserved == 0.01
    ledger.add("m", 300_000, 0, (0, 0))  # the first item really cost 0.3, thirty times its estimate
    budget.finish(reserved)
    assert budget.try_start(0.01) == pytest.approx(0.3)
    assert budget.try_start(0.01) == pytest.approx(0.3)  # 0.3 spent + 0.3 reserved + 0.3 <= 1.0
    assert budget.try_start(0.01) is None


async def test_max_cost_stops_starting_items_mid_run_and_writes_the_ones_started(tmp_path: Path) -> None:
    # Each item really costs 2 x (1000 in + 500 out) at small's price + the judge's: far above the estimate.
    api = FakeApi(usage=(100_000, 50_000))
    prices = {"small": Price(1.0, 2.0), "big": Price(1.0, 2.0)}
    settings = LabelSettings(
        models=("small", "big"),
        judge_model="j",
        prices=prices,
        judge_price=Price(0.0, 0.0),
        max_cost=0.5,
        concurrency=1,
    )
    ledger = Ledger({**prices, JUDGE: Price(0.0, 0.0)})
    items = [prompt(f"i{n}") for n in range(10)]
    out = tmp_path / "out.jsonl"
    err = io.StringIO()
    async with httpx.AsyncClient(transport=httpx.MockTransport(api)) as client:
        lab = labeller(client, settings, ledger)
        with out.open("ab") as fh:
            stats = await label_items(
                items, lab, RecordWriter(fh), Budget(0.5, ledger), Progress(10, err, lambda: 0.0, tty=False)
            )
    # one item costs 2 x (0.1 + 0.1) = 0.4: the second would pass 0.5, so it never starts
    assert (stats.written, stats.not_started) == (1, 9)
    assert ledger.total == pytest.approx(0.4)
    assert [orjson.loads(line)["id"] for line in out.read_bytes().splitlines()] == ["i0"]


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_label_parser(parser.add_subparsers())
    return parser.parse_args(["label", *argv])


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def run(
    tmp_path: Path,
    api: Callable[[httpx.Request], httpx.Response],
    *extra: str,
    stdin: io.StringIO | None = None,
    env: dict[str, str] | None = None,
) -> tuple[int, str, str]:
    """``model-router label`` on ``tmp_path/prompts.jsonl`` -> ``tmp_path/out.jsonl``, against ``api``."""
    (tmp_path / "router.yaml").write_text(CONFIG)
    args = parse(
        "--data",
        str(tmp_path / "prompts.jsonl"),
        "--out",
        str(tmp_path / "out.jsonl"),
        "--models",
        "small,big",
        "--base-url",
        "http://gw/v1",
        "--judge-base-url",
        "http://judge/v1",
        "--judge-model",
        "j",
        "--config",
        str(tmp_path / "router.yaml"),
        "--backoff",
        "0",
        *extra,
    )
    out, err = io.StringIO(), io.StringIO()
    console = Console(stdin or io.StringIO(""), out, err)
    code = run_label_command(args, prompt_text_of_item, console, env or {}, httpx.MockTransport(api))
    return code, out.getvalue(), err.getvalue()


def write_prompts(tmp_path: Path, count: int) -> None:
    lines = [
        orjson.dumps({"id": f"p{n}", "messages": [{"role": "user", "content": f"question {n}"}]}) for n in range(count)
    ]
    (tmp_path / "prompts.jsonl").write_bytes(b"\n".join(lines) + b"\n")


def never_called(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"no request expected, got {request.url}")


def test_command_labels_resumes_and_summarises(tmp_path: Path) -> None:
    write_prompts(tmp_path, 3)
    api = FakeApi(usage=(10, 5))
    code, out, err = run(tmp_path, api, "--judge-price-in", "1", "--judge-price-out", "1")
    assert code == 0, out + err
    rows = [orjson.loads(line) for line in (tmp_path / "out.jsonl").read_bytes().splitlines()]
    assert [r["scores"] for r in rows] == [{"small": 1 / 3, "big": 1.0}] * 3
    assert "estimate for 3 items x 2 models" in out and "labelled 3 items" in out and "skipped 0" in out
    assert "label: 3/3" in err  # stderr is not a terminal: plain progress lines
    assert (tmp_path / "out.jsonl").stat().st_mode & 0o777 == 0o600, "the records hold prompts: owner-only"
    write_prompts(tmp_path, 5)
    code, out, _ = run(tmp_path, api, "--yes")
    assert code == 0 and "labelled 2 items" in out and "skipped 3 items already" in out
    assert len((tmp_path / "out.jsonl").read_bytes().splitlines()) == 5


def test_the_summary_shows_an_unpriced_cost_as_unknown_not_zero(tmp_path: Path) -> None:
    write_prompts(tmp_path, 1)
    code, out, _ = run(tmp_path, FakeApi(usage=(10_000, 5_000)), "--yes")  # no judge price
    assert code == 0 and "cost unknown (no price)" in out  # the estimate's judge line
    assert "actual cost 0.2200 + unknown (small 0.0200, big 0.2000, judge unknown)" in out


def test_command_does_not_start_when_the_estimate_exceeds_max_cost(tmp_path: Path) -> None:
    write_prompts(tmp_path, 50)
    code, out, _ = run(
        tmp_path, never_called, "--judge-price-in", "0", "--judge-price-out", "0", "--max-cost", "0.000001"
    )
    assert code == 3
    assert "exceeds --max-cost" in out and "not started" in out
    assert not (tmp_path / "out.jsonl").exists()


def test_command_stops_mid_run_on_actual_cost_and_says_what_is_left(tmp_path: Path) -> None:
    write_prompts(tmp_path, 10)
    api = FakeApi(usage=(10_000, 5_000))  # 0.02 + 0.2 per item at CONFIG's prices, 30x the estimate
    code, out, _ = run(
        tmp_path, api, "--judge-price-in", "0", "--judge-price-out", "0", "--max-cost", "0.5", "--concurrency", "1"
    )
    assert code == 3
    assert "labelled 2 items" in out and "stopped by --max-cost 0.5: 8 items not started" in out
    assert "actual cost 0.4400 (small 0.0400, big 0.4000, judge 0.0000)" in out
    assert len((tmp_path / "out.jsonl").read_bytes().splitlines()) == 2
    code, out, _ = run(
        tmp_path, api, "--judge-price-in", "0", "--judge-price-out", "0", "--max-cost", "0.5", "--concurrency", "1"
    )
    assert code == 3 and "skipped 2 items already" in out and "labelled 2 items" in out  # the next run continues


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        pytest.param(["--max-cost", "1"], "--max-cost needs every price; none for judge", id="max-cost-unpriced"),
        pytest.param(["--pin-alias", "auto"], "--pin-alias needs the override secret", id="pin-without-token"),
        pytest.param(["--judge-price-in", "1"], "go together", id="half-a-judge-price"),
        pytest.param(["--header", "novalue"], "expected NAME=VALUE", id="bad-header"),
        pytest.param(["--header", "x-a=env:NOPE"], "NOPE is not set", id="unset-env-header"),
        pytest.param(["--base-url", "gw:10000/v1"], "expected an http:// or https:// URL", id="url-without-scheme"),
        pytest.param(["--out", "no/such/dir/out.jsonl"], "does not exist", id="out-dir-missing"),
        pytest.param(["--out", "out.jsonl.gz"], "plain .jsonl", id="out-gz"),
        pytest.param(
            ["--models", "small,nope"], "--models nope: not in the catalog of --config", id="model-not-in-catalog"
        ),
        pytest.param(
            ["--pin-alias", "big", "--header", "x-model-router-override-token=t"],
            "--pin-alias big: not in policy.routable_models of --config",
            id="pin-alias-not-routable",
        ),
        pytest.param(["--out", "/dev/null"], "cannot write --out /dev/null (not a regular file)", id="out-device"),
    ],
)
def test_command_rejects_bad_options_before_any_request(tmp_path: Path, extra: list[str], message: str) -> None:
    write_prompts(tmp_path, 1)
    code, _, err = run(tmp_path, never_called, *extra)
    assert code == 2 and message in err


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc (unwritable even for root)")
def test_an_out_that_cannot_be_created_is_refused_before_the_estimate(tmp_path: Path) -> None:
    """A read-only mount or an unwritable directory: one line, not a traceback after the estimate."""
    write_prompts(tmp_path, 1)
    code, out, err = run(tmp_path, never_called, "--out", "/proc/label.jsonl")
    assert (code, out) == (2, "")
    assert err.startswith("model-router label: cannot write --out /proc/label.jsonl (") and err.count("\n") == 1


def test_an_out_that_is_the_data_file_is_refused(tmp_path: Path) -> None:
    write_prompts(tmp_path, 2)
    before = (tmp_path / "prompts.jsonl").read_bytes()
    code, out, err = run(tmp_path, never_called, "--out", str(tmp_path / "prompts.jsonl"))
    assert (code, out) == (2, "")
    assert err == f"model-router label: --out {tmp_path / 'prompts.jsonl'} is the --data file\n"
    assert (tmp_path / "prompts.jsonl").read_bytes() == before


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(b'{"prompt": "2+2?", "source": "x"}\n' * 3, "3 malformed input lines skipped", id="no-ids"),
        pytest.param(b"", "the file is empty", id="empty"),
    ],
)
def test_command_refuses_an_input_without_one_usable_item(tmp_path: Path, content: bytes, message: str) -> None:
    """The shared data's prompt file has no ids: labelling nothing and exiting 0 would look like success."""
    (tmp_path / "prompts.jsonl").write_bytes(content)
    code, _, err = run(tmp_path, never_called)
    assert code == 2 and "no usable item" in err and message in err


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        pytest.param(lambda gz: gz[:-30], "truncated gzip file", id="truncated"),
        pytest.param(lambda gz: b"{}" + gz, "not a gzip file", id="not-gzip"),
    ],
)
def test_command_refuses_a_damaged_gz_before_any_request(
    tmp_path: Path, damage: Callable[[bytes], bytes], message: str
) -> None:
    """A cut .gz was one malformed line, and the part before the cut was labelled and paid for."""
    write_prompts(tmp_path, 200)
    data = tmp_path / "prompts.jsonl.gz"
    data.write_bytes(damage(gzip.compress((tmp_path / "prompts.jsonl").read_bytes())))
    code, out, err = run(tmp_path, never_called, "--data", str(data))
    assert code == 2 and err == f"model-router label: cannot read --data {data} ({message})\n" and not out


def test_command_rejects_a_single_model(tmp_path: Path) -> None:
    write_prompts(tmp_path, 1)
    args = parse(
        "--data",
        str(tmp_path / "prompts.jsonl"),
        "--out",
        str(tmp_path / "o.jsonl"),
        "--models",
        "a,a",
        "--base-url",
        "http://gw/v1",
        "--judge-base-url",
        "http://j/v1",
        "--judge-model",
        "j",
    )
    err = io.StringIO()
    assert run_label_command(args, prompt_text_of_item, Console(io.StringIO(), io.StringIO(), err), {}) == 2
    assert "two or more distinct" in err.getvalue()


def test_secret_headers_can_come_from_the_environment(tmp_path: Path) -> None:
    write_prompts(tmp_path, 1)
    api = FakeApi()
    code, _, _ = run(
        tmp_path,
        api,
        "--header",
        "x-model-router-override-token=env:TOKEN",
        "--pin-alias",
        "auto",
        env={"TOKEN": "from-env", "MODEL_ROUTER_JUDGE_API_KEY": "jk"},
    )
    assert code == 0
    assert {r.headers["x-model-router-override-token"] for r in api.sent_to("gw")} == {"from-env"}
    assert {r.headers["authorization"] for r in api.sent_to("judge")} == {"Bearer jk"}


def test_a_terminal_is_asked_and_a_no_starts_nothing(tmp_path: Path) -> None:
    write_prompts(tmp_path, 2)
    code, out, _ = run(tmp_path, never_called, stdin=Tty("n\n"))
    assert code == 1 and "estimate for 2 items" in out
    assert not (tmp_path / "out.jsonl").exists(), "opened only to check it: a declined run leaves nothing"


def test_progress_lines_in_a_log_come_at_most_every_interval() -> None:
    now = [0.0]
    stream = io.StringIO()
    progress = Progress(4, stream, lambda: now[0], tty=False, interval=10.0)
    for t in (1.0, 2.0, 15.0, 16.0):
        now[0] = t
        progress.advance("spent 0.1")
    progress.close()
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("label: 1/4  25%")
    assert [line.split()[1] for line in lines] == ["1/4", "3/4", "4/4"]


def test_progress_on_a_terminal_redraws_one_line() -> None:
    stream = io.StringIO()
    progress = Progress(2, stream, lambda: 1.0, tty=True)
    progress.advance()
    progress.advance()
    progress.close()
    text = stream.getvalue()
    assert text.count("\r") == 3 and text.endswith("\n") and "[" + "#" * 30 + "]" in text


@pytest.mark.parametrize(
    "module", ["client", "command", "cost", "grading", "options", "progress", "records", "retry", "run"]
)
def test_every_exported_name_exists(module: str) -> None:
    mod = importlib.import_module(f"extproc.labeling.{module}")
    assert mod.__all__ and all(hasattr(mod, name) for name in mod.__all__)


def test_the_cli_does_not_load_the_labeller_until_it_runs() -> None:
    code = "import sys, extproc.cli; print(sorted(m for m in sys.modules if m in {'httpx', 'extproc.labeling.run'}))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_a_wrong_key_labels_nothing_marks_nothing_done_and_fails(tmp_path: Path) -> None:
    """Every call refused (401): no record is written, the exit code says so, and the fixed rerun labels all."""
    write_prompts(tmp_path, 3)
    code, out, _ = run(tmp_path, FakeApi(fail={"small": 401, "big": 401}), "--yes")
    assert code == 4 and "nothing was labelled" in out and "3 items not written" in out
    assert not (tmp_path / "out.jsonl").read_bytes().strip()
    code, out, _ = run(tmp_path, FakeApi(), "--yes")
    assert code == 0 and "labelled 3 items" in out and "skipped 0" in out


def test_an_item_with_one_grade_is_written_and_done(tmp_path: Path) -> None:
    write_prompts(tmp_path, 2)
    code, out, _ = run(tmp_path, FakeApi(fail={"big": 400}), "--yes")
    assert code == 0 and "labelled 2 items" in out
    rows = [orjson.loads(line) for line in (tmp_path / "out.jsonl").read_bytes().splitlines()]
    assert [sorted(r["scores"]) for r in rows] == [["small"], ["small"]]


def test_a_model_added_on_resume_is_reported_missing_not_asked(tmp_path: Path) -> None:
    """Resume is by id: the records are skipped and the new model is never asked, which the summary must say
    instead of ``missing mid: 0``. A model a record names in ``missing`` is known, and not counted again."""
    write_prompts(tmp_path, 3)
    assert run(tmp_path, FakeApi(fail={"big": 400}), "--yes")[0] == 0
    before = (tmp_path / "out.jsonl").read_bytes()
    code, out, _ = run(tmp_path, never_called, "--yes", "--models", "small,big,mid")
    assert code == 0 and "labelled 0 items" in out and "skipped 3 items already" in out
    note = "note: 3 skipped records have no score for mid (resume is by id"
    assert out.count(note) == 2, "before the estimate and again under the summary"
    assert "missing mid: 3 (not_asked x3)" in out
    assert "missing small: 0" in out and "missing big: 0" in out
    assert (tmp_path / "out.jsonl").read_bytes() == before


def test_a_second_run_on_the_same_out_is_refused(tmp_path: Path) -> None:
    import fcntl

    write_prompts(tmp_path, 2)
    partial = b'{"id": "p0", "messa'  # the other run's record, half written so far
    (tmp_path / "out.jsonl").write_bytes(partial)
    with (tmp_path / "out.jsonl").open("ab") as held:  # another label run, mid-way
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        code, out, err = run(tmp_path, never_called, "--yes")
        assert (tmp_path / "out.jsonl").read_bytes() == partial, "the refused run must not cut the other's line"
    assert (code, out) == (2, ""), "refused before the estimate, on stderr"
    assert err.startswith("model-router label: another label run is writing") and err.count("\n") == 1
    code, out, _ = run(tmp_path, FakeApi(), "--yes")
    assert code == 0 and "labelled 2 items" in out


def test_a_full_disk_stops_the_run_with_one_line_and_keeps_what_was_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every answer after the failed write would be paid for and lost: the run stops, no traceback."""
    write_prompts(tmp_path, 6)
    writes = [0]
    real = RecordWriter.write

    def fill_up(self: RecordWriter, record: dict[str, object]) -> None:
        writes[0] += 1
        if writes[0] > 2:
            self.fh = _FullDisk()  # type: ignore[assignment]
        real(self, record)

    monkeypatch.setattr(RecordWriter, "write", fill_up)
    api = FakeApi()
    code, out, err = run(tmp_path, api, "--concurrency", "1")
    assert code == 4, out + err
    assert f"model-router label: cannot write --out {tmp_path / 'out.jsonl'} (No space left on device)" in err
    assert "Traceback" not in err
    assert len((tmp_path / "out.jsonl").read_bytes().splitlines()) == 2, "the records written before are kept"
    assert len(api.sent_to("gw")) < 6 * 2, "stopped: not every item was asked"


class _FullDisk(io.BytesIO):
    def write(self, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_ctrl_c_at_the_question_is_a_no(tmp_path: Path) -> None:
    class Interrupted(Tty):
        def readline(self, size: int | None = -1) -> str:
            raise KeyboardInterrupt

    write_prompts(tmp_path, 2)
    code, out, _ = run(tmp_path, never_called, stdin=Interrupted())
    assert code == 1 and "estimate for 2 items" in out
    assert not (tmp_path / "out.jsonl").exists()
