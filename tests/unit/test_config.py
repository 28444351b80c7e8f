"""Config validation names every bad field; the shipped config is valid."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import yaml

from devstack.stack import ENVOY_DIR
from extproc.cli import main
from extproc.config import MAX_YAML_DEPTH, Settings, load_config, load_yaml, parse_config, parse_listen
from extproc.errors import ConfigError
from extproc.fail_open_lua import render_fail_open_lua
from extproc.reload import load_snapshot, reload_snapshot, watch_config
from extproc.schemas import ROUTER_PATHS
from extproc.snapshot import SnapshotRef, build_snapshot
from tests.fakes import FakeDifficultyModel

MODEL = {"name": "m", "cluster": "c", "tier": "cheap", "input_price_per_mtok": 1, "output_price_per_mtok": 2}


def base(**changes: object) -> dict[str, object]:
    data: dict[str, object] = {"policy": {"default_model": "m"}, "catalog": [dict(MODEL)]}
    data.update(changes)
    return data


_NAME_RULE = (
    "a model name has no leading or trailing space and no control character (it is written into request bodies and "
    "response headers)"
)


@pytest.mark.parametrize(
    ("data", "problems"),
    [
        pytest.param(
            base(policy={"default_model": "x"}), ["policy.default_model: 'x' is not in catalog"], id="default"
        ),
        pytest.param(  # YAML's `yes` and a quoted number: a 1-token window and a target were loaded before
            base(catalog=[{**MODEL, "context_window": True}], policy={"default_model": "m", "quality_target": "0.5"}),
            [
                "policy.quality_target: Input should be a valid number",
                "catalog[0].context_window: Input should be a valid integer",
            ],
            id="booleans-and-strings-are-no-numbers",
        ),
        pytest.param(  # YAML's .nan failed the bounds as "less than or equal to 1"
            base(
                catalog=[{**MODEL, "input_price_per_mtok": float("nan")}],
                policy={"default_model": "m", "quality_target": float("nan")},
            ),
            [
                "policy.quality_target: Input should be a finite number",
                "catalog[0].input_price_per_mtok: Input should be a finite number",
            ],
            id="nan-is-not-a-number",
        ),
        pytest.param(
            base(policy={"default_model": "m", "expected_output_tokens": 128_000}),
            [
                "policy.expected_output_tokens: 128000 leaves no room for a prompt in any catalog model's context "
                "window (the widest: 128000)"
            ],
            id="expected-output-past-every-window",
        ),
        pytest.param(  # the broken window is named once, with no "widest" made up without it
            base(
                catalog=[{**MODEL, "context_window": 0}, {**MODEL, "name": "n", "context_window": 200}],
                policy={"default_model": "m", "expected_output_tokens": 300},
            ),
            ["catalog[0].context_window: Input should be greater than 0"],
            id="expected-output-not-checked-against-a-broken-window",
        ),
        pytest.param(
            base(policy={"default_model": "m", "quality_target": 2}),
            ["policy.quality_target: Input should be less than or equal to 1"],
            id="target-bound",
        ),
        pytest.param(
            base(catalog=[{**MODEL, "cluster": None}]),
            ["catalog[0].cluster: Input should be a valid string"],
            id="cluster",
        ),
        pytest.param(base(catalog=[MODEL, MODEL]), ["catalog[1].name: duplicate model name 'm'"], id="duplicate"),
        pytest.param(
            base(catalog=[{**MODEL, "name": "m\n"}], policy={"default_model": "m\n", "routable_models": ["a", " b"]}),
            [
                "policy.routable_models[1]: ' b': " + _NAME_RULE,
                "catalog[0].name: 'm\\n': " + _NAME_RULE,
            ],
            id="model-names-fit-a-header",
        ),
        pytest.param(
            base(server={"config_poll_seconds": 0.001}),
            ["server.config_poll_seconds: must be 0 (reload on SIGHUP only) or at least 0.1"],
            id="poll-that-burns-a-core",
        ),
        pytest.param(base(surprise=1), ["surprise: Extra inputs are not permitted"], id="unknown-key"),
        pytest.param(
            base(classifier={"kind": "gpt"}),
            ["classifier.kind: Input should be 'onnx' or 'heuristic'"],
            id="kind",
        ),
        pytest.param(
            base(catalog=[{**MODEL, "input_price_per_mtok": -1, "tier": "Bad Tier"}]),
            [
                "catalog[0].tier: String should match pattern '^[a-z0-9_\\-]+$'",
                "catalog[0].input_price_per_mtok: Input should be greater than or equal to 0",
            ],
            id="every-problem-listed",
        ),
        pytest.param([1, 2], ["<root>: expected a mapping at the top of the file"], id="not-a-mapping"),
        pytest.param(
            base(capture={"path": "/d/cap.jsonl"}, feedback={"path": "/d/cap.jsonl.1"}),
            ["feedback.path: must differ from capture.path and from each other's <path>.1 and <path>.lock"],
            id="feedback-is-the-captures-rotated-file",
        ),
        pytest.param(
            base(capture={"path": "/d/x/../cap.jsonl"}, feedback={"path": "/d/cap.jsonl"}),
            ["feedback.path: must differ from capture.path and from each other's <path>.1 and <path>.lock"],
            id="same-file-spelled-differently",
        ),
        pytest.param(
            base(capture={"path": "/d/fb.jsonl.lock"}, feedback={"path": "/d/fb.jsonl"}),
            ["feedback.path: must differ from capture.path and from each other's <path>.1 and <path>.lock"],
            id="capture-is-the-feedback-lock-file",
        ),
        pytest.param(
            base(tenants={"t": {"models": []}}),
            [
                "tenants.t.models: Tuple should have at least 1 item after validation, not 0",
                "policy.tenant_header: required when tenants are configured",
            ],
            id="tenant-with-no-models-is-not-everything",
        ),
    ],
)
def test_invalid_config_names_fields(data: object, problems: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert info.value.problems == problems


BIG = {**MODEL, "name": "big", "tier": "strong"}
_MISSING = "cannot read /nonexistent/model-router/{}: No such file or directory"


@pytest.mark.parametrize(
    ("data", "problems"),
    [
        pytest.param(
            base(policy={"default_model": "nope", "quality_target": 2}),
            [
                "policy.quality_target: Input should be less than or equal to 1",
                "policy.default_model: 'nope' is not in catalog",
            ],
            id="a-field-error-does-not-stop-the-cross-checks",
        ),
        pytest.param(
            base(limits={"max_messages": 0}, policy={"default_model": "nope"}, catalog=[MODEL, MODEL]),
            [
                "limits.max_messages: Input should be greater than 0",
                "catalog[1].name: duplicate model name 'm'",
                "policy.default_model: 'nope' is not in catalog",
            ],
            id="a-duplicate-name-hides-nothing",
        ),
        pytest.param(
            base(
                classifier={"kind": "heuristic"},
                catalog=[{**MODEL, "ability": 0}],
                server={
                    "tls": {
                        f: f"/nonexistent/model-router/{f}.pem" for f in ("cert_file", "key_file", "client_ca_file")
                    }
                },
            ),
            [f"server.tls.{f}: " + _MISSING.format(f"{f}.pem") for f in ("cert_file", "key_file", "client_ca_file")],
            id="every-unreadable-tls-file",
        ),
        pytest.param(
            base(
                catalog=[{**MODEL, "ability": 0}],
                classifier={"kind": "onnx", "model_dir": "/nonexistent/model-router/model"},
                feedback={"signing_key_file": "/nonexistent/model-router/keys"},
                server={
                    "tls": {
                        "cert_file": "/nonexistent/model-router/c.pem",
                        "key_file": "/nonexistent/model-router/k.pem",
                    }
                },
            ),
            [
                "classifier.model_dir: cannot load onnx model: /nonexistent/model-router/model/model.onnx is missing",
                "feedback.signing_key_file: cannot read /nonexistent/model-router/keys: No such file or directory",
                "server.tls.cert_file: " + _MISSING.format("c.pem"),
                "server.tls.key_file: " + _MISSING.format("k.pem"),
            ],
            id="the-classifier-signing-keys-and-tls-files-are-all-checked",
        ),
        pytest.param(
            base(
                policy={"default_model": "m", "tenant_header": "x-tenant"},
                catalog=[{**MODEL, "cluster": None}, BIG],
                tenants={"t": {"models": ["m", "big", "zz"]}},
            ),
            ["catalog[0].cluster: Input should be a valid string", "tenants.t.models[2]: 'zz' is not in catalog"],
            id="a-broken-entry-still-names-its-model",
        ),
        pytest.param(
            base(
                policy={"default_model": "m", "quality_target": 2},
                catalog=[{**MODEL, "name": ""}, BIG],
                tenants={"t": {"models": ["m"]}},
            ),
            [
                "policy.quality_target: Input should be less than or equal to 1",
                "catalog[0].name: String should have at least 1 character",
                "policy.tenant_header: required when tenants are configured",
            ],
            id="a-broken-name-skips-only-the-not-in-catalog-checks",
        ),
        pytest.param(
            {"policy": {"default_model": "m"}, "tenants": {"t": {"models": ["m"]}}, "capture": {"enabled": True}},
            [
                "catalog: Field required",
                "policy.tenant_header: required when tenants are configured",
                "capture.path: required when capture.enabled is true",
            ],
            id="a-missing-catalog-skips-only-what-reads-it",
        ),
        pytest.param(
            base(policy={"default_model": 5}, tenants={"t": {"models": ["m"]}}),
            [
                "policy.default_model: Input should be a valid string",
                "policy.tenant_header: required when tenants are configured",
            ],
            id="a-broken-default-model-is-not-compared-with-tenants",
        ),
        pytest.param(
            base(
                policy={"default_model": "m", "tenant_header": "x-tenant"},
                tenants={"a": {"models": []}, "b": {"models": ["zz"], "default_model": "m"}},
            ),
            [
                "tenants.a.models: Tuple should have at least 1 item after validation, not 0",
                "tenants.b.models[0]: 'zz' is not in catalog",
                "tenants.b.default_model: 'm' is not among the tenant's models",
            ],
            id="a-broken-tenant-hides-no-other",
        ),
        pytest.param(
            base(
                telemetry={"sampling_ratio": 2},
                capture={"path": "/d/cap.jsonl"},
                feedback={"enabled": True, "path": "/d/cap.jsonl", "listen": "127.0.0.1:9464"},
            ),
            [
                "telemetry.sampling_ratio: Input should be less than or equal to 1",
                "feedback.path: must differ from capture.path and from each other's <path>.1 and <path>.lock",
                "feedback.listen: must differ from telemetry.metrics_listen (both on port 9464)",
            ],
            id="learning-checks-beside-a-field-error",
        ),
        pytest.param(
            base(
                server={"listen": "127.0.0.1:7000"},
                telemetry={"metrics_listen": "0.0.0.0:7000"},
                feedback={"enabled": True, "path": "/d/fb.jsonl", "listen": "[::1]:7001"},
            ),
            ["telemetry.metrics_listen: must differ from server.listen (both on port 7000)"],
            id="every-interface-includes-loopback",
        ),
        pytest.param(
            base(server={"listen": "localhost:7000"}, telemetry={"metrics_listen": "127.0.0.1:7000"}),
            ["telemetry.metrics_listen: must differ from server.listen (both on port 7000)"],
            id="localhost-is-loopback",
        ),
        pytest.param(
            base(server={"listen": "[::0]:7000"}, telemetry={"metrics_listen": "127.0.0.1:7000"}),
            ["telemetry.metrics_listen: must differ from server.listen (both on port 7000)"],
            id="ipv6-any-spelled-out-takes-ipv4-too",
        ),
        pytest.param(
            base(telemetry={"otlp_endpoint": "http://user:pw@otel:4317"}),
            ["telemetry.otlp_endpoint: credentials in the URL would not be sent: use OTEL_EXPORTER_OTLP_HEADERS"],
            id="otlp-endpoint-with-credentials",
        ),
        pytest.param(
            base(telemetry={"otlp_endpoint": "not a url"}),
            ["telemetry.otlp_endpoint: expected http(s)://host[:port] or host[:port], got 'not a url'"],
            id="otlp-endpoint-not-a-url",
        ),
        pytest.param(
            base(telemetry={"otlp_endpoint": "http://otel:4317/v1/traces"}),  # OTLP/HTTP's path: we speak gRPC
            [
                "telemetry.otlp_endpoint: expected http(s)://host[:port] or host[:port], got 'http://otel:4317/v1/traces'"
            ],
            id="otlp-endpoint-with-a-path",
        ),
        pytest.param(
            base(
                server={"listen": "[::]:7001"},
                telemetry={"metrics_listen": "127.0.0.1:7002"},
                feedback={"enabled": True, "path": "/d/fb.jsonl", "listen": "[::1]:7001"},
            ),
            ["feedback.listen: must differ from server.listen (both on port 7001)"],
            id="ipv6-any",
        ),
        pytest.param(
            base(
                capture={"enabled": True, "path": ["x"]},
                feedback={"enabled": "maybe", "path": "/d/cap.jsonl"},
                tenants={"t": {}},
            ),
            [
                "capture.path: Input is not a valid path for <class 'pathlib.Path'>",
                "feedback.enabled: Input should be a valid boolean, unable to interpret input",
                "policy.tenant_header: required when tenants are configured",
            ],
            id="broken-learning-fields-skip-the-checks-that-read-them",
        ),
    ],
)
def test_check_config_names_every_independent_problem_once(
    data: dict[str, object], problems: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """README "Configuration": a message per field, all at once. A check between fields still runs when an unrelated
    field failed, and is skipped when a field it reads failed (that field's own problem is the one reported)."""
    path = tmp_path / "model-router.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["check-config", "--config", str(path)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "model-router: invalid configuration:",
        *(f"  {p}" for p in problems),
    ]


def test_unknown_model_without_ability_is_named() -> None:
    settings = parse_config(base())
    with pytest.raises(ConfigError) as info:
        build_snapshot(settings, lambda _s: FakeDifficultyModel())
    assert info.value.problems[0].startswith("catalog[0].ability: required, fake-v1 has no default ability for 'm'")


def test_shipped_config_is_valid() -> None:
    settings = load_config(ENVOY_DIR / "model-router.yaml")
    assert settings.policy.default_model in {m.name for m in settings.catalog}


def test_unreadable_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("policy: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_bytes(b"# caf\xe9\npolicy: {}\n")
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte 5\)"):
        load_config(bad)
    bad.write_text("limits:\n  max_messages: 10\npolicy: {}\nlimits:\n  max_messages: 20\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'limits'\n.*line 4"):
        load_config(bad)
    bad.write_text("policy: {default_model: a, default_model: b}\n")
    with pytest.raises(ConfigError, match="duplicate key 'default_model'"):
        load_config(bad)
    bad.write_text("? [a, b]\n: 1\n")  # a key PyYAML cannot hash: a config error, not a TypeError
    with pytest.raises(ConfigError, match="unhashable key"):
        load_config(bad)
    merged = tmp_path / "merged.yaml"  # a YAML merge key is not a duplicate, and merged keys may be overridden
    merged.write_text("base: &b {max_messages: 10, max_json_depth: 8}\nlimits: {<<: *b, max_messages: 20}\n")
    assert load_yaml(merged) == {
        "base": {"max_messages": 10, "max_json_depth": 8},
        "limits": {"max_messages": 20, "max_json_depth": 8},
    }
    for depth in (5_000, 200_000):  # libyaml composes recursively in C: 100,000 deep crashed the process
        bad.write_text("a: " + "[" * depth + "]" * depth)
        with pytest.raises(ConfigError, match="nested too deeply"):
            load_config(bad)
    bad.write_text("a: " + "{b: " * MAX_YAML_DEPTH + "1" + "}" * MAX_YAML_DEPTH)
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_yaml(bad)
    bad.write_text("a: " + "{b: " * (MAX_YAML_DEPTH - 1) + "1" + "}" * (MAX_YAML_DEPTH - 1))
    assert isinstance(load_yaml(bad), dict)


async def test_a_reload_that_fails_in_any_way_keeps_the_running_config_and_the_watcher(tmp_path: Path) -> None:
    """Undecodable bytes, or a model that fails to load: each is a rejected reload, and a later valid edit applies."""
    path = tmp_path / "model-router.yaml"
    shipped = (ENVOY_DIR / "model-router.yaml").read_text()
    path.write_text(shipped)
    ref = SnapshotRef(load_snapshot(path, lambda _s: FakeDifficultyModel()))
    running = ref.current
    results: list[bool] = []
    broken_loader = {"on": False}

    def load_model(_settings: Settings) -> FakeDifficultyModel:
        if broken_loader["on"]:
            raise RuntimeError("onnxruntime could not load the model")
        return FakeDifficultyModel()

    watcher = asyncio.create_task(watch_config(path, ref, results.append, 0.01, load_model))
    await asyncio.sleep(0)  # the watcher fingerprints the file as it starts
    try:
        path.write_bytes(b"# caf\xe9\n" + shipped.encode())
        await _until(lambda: results == [False])
        broken_loader["on"] = True
        path.write_text(shipped + "\n# touched\n")
        await _until(lambda: results == [False, False])
        assert ref.current is running
        broken_loader["on"] = False
        path.write_text(shipped.replace("quality_target: 0.8", "quality_target: 0.7"))
        await _until(lambda: results == [False, False, True])
        assert ref.current.settings.policy.quality_target == 0.7
    finally:
        watcher.cancel()


@contextlib.asynccontextmanager
async def _config_naming(
    tmp_path: Path, model_dir: Path, load_model: Callable[[Settings], FakeDifficultyModel]
) -> AsyncIterator[tuple[SnapshotRef, list[bool]]]:
    """A watcher on the shipped config, which is then edited to name ``model_dir`` as the classifier's directory;
    yields the snapshot reference and the reload results."""
    path = tmp_path / "model-router.yaml"
    shipped = (ENVOY_DIR / "model-router.yaml").read_text()
    path.write_text(shipped)
    ref = SnapshotRef(load_snapshot(path, lambda _s: FakeDifficultyModel()))
    results: list[bool] = []
    watcher = asyncio.create_task(watch_config(path, ref, results.append, 0.01, load_model))
    await asyncio.sleep(0)
    try:
        path.write_text(shipped.replace("  kind: onnx", f"  kind: onnx\n  model_dir: {model_dir}"))
        yield ref, results
    finally:
        watcher.cancel()


async def test_a_file_refused_for_its_model_is_tried_again_once_the_model_changes(tmp_path: Path) -> None:
    """A config naming a model directory that is not there yet (copied in after the config, or fixed in place): the
    refused file is retried when the directory's files change, and not on every poll before that."""
    model_dir = tmp_path / "model"
    loads: list[Path | None] = []

    def load_model(settings: Settings) -> FakeDifficultyModel:
        loads.append(settings.classifier.model_dir)
        if not (model_dir / "model.onnx").exists():
            raise RuntimeError("no model.onnx")
        return FakeDifficultyModel()

    async with _config_naming(tmp_path, model_dir, load_model) as (ref, results):
        await _until(lambda: results == [False])
        await asyncio.sleep(0.1)
        assert results == [False] and len(loads) == 1, "not retried while the model is unchanged"
        model_dir.mkdir()
        (model_dir / "model.onnx").write_bytes(b"onnx")
        await _until(lambda: results[-1:] == [True])
        assert ref.current.settings.classifier.model_dir == model_dir and ref.rejected_model is None


async def test_a_model_that_arrives_while_a_load_fails_is_tried_again(tmp_path: Path) -> None:
    """The model directory is read before the load: a copy that completes while the failing load runs is a change."""
    model_dir = tmp_path / "model"
    model_dir.mkdir()

    def load_model(_settings: Settings) -> FakeDifficultyModel:
        if not (model_dir / "model.onnx").exists():
            (model_dir / "model.onnx").write_bytes(b"onnx")  # the copy lands while this load fails
            raise RuntimeError("no model.onnx")
        return FakeDifficultyModel()

    async with _config_naming(tmp_path, model_dir, load_model) as (_ref, results):
        await _until(lambda: results[-1:] == [True])
        assert results == [False, True]


async def test_a_rejected_file_stays_invalid_until_it_changes_and_a_revert_is_valid_again(tmp_path: Path) -> None:
    """``model_router_config_last_reload_successful`` (k8s/monitoring alerts on it): a rejection is reported once,
    so the state is re-said on every settled poll; putting the running content back needs no reload to be fine."""
    path = tmp_path / "model-router.yaml"
    shipped = (ENVOY_DIR / "model-router.yaml").read_text()
    path.write_text(shipped)
    ref = SnapshotRef(load_snapshot(path, lambda _s: FakeDifficultyModel()))
    results: list[bool] = []
    states: list[bool] = []
    watcher = asyncio.create_task(
        watch_config(path, ref, results.append, 0.01, lambda _s: FakeDifficultyModel(), on_state=states.append)
    )
    try:
        await _until(lambda: states[-1:] == [True])
        path.write_text(shipped.replace("quality_target: 0.8", "quality_target: 7"))
        await _until(lambda: results == [False])
        states.clear()
        await _until(lambda: len(states) >= 3)
        assert set(states) == {False} and results == [False], "said again on each poll, not reloaded again"
        path.write_text(shipped)  # put back: the running config's bytes
        await _until(lambda: states[-1:] == [True])
        assert results == [False]
    finally:
        watcher.cancel()


async def test_a_config_file_that_disappears_is_said_once_and_the_running_config_stays(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "model-router.yaml"
    shipped = (ENVOY_DIR / "model-router.yaml").read_text()
    path.write_text(shipped)
    ref = SnapshotRef(load_snapshot(path, lambda _s: FakeDifficultyModel()))
    running = ref.current
    caplog.set_level("WARNING", logger="model_router.reload")
    results: list[bool] = []
    readable: list[bool] = []  # model_router_config_file_readable
    watcher = asyncio.create_task(
        watch_config(path, ref, results.append, 0.01, lambda _s: FakeDifficultyModel(), on_readable=readable.append)
    )
    await asyncio.sleep(0.05)
    try:
        assert readable == [], "a readable file is not reported on every poll"
        path.unlink()
        await _until(lambda: any("cannot be read" in r.getMessage() for r in caplog.records))
        await asyncio.sleep(0.1)  # many more polls: still one line
        assert [r.getMessage() for r in caplog.records] == [
            f"config file {path} cannot be read; keeping the running config until it can"
        ]
        assert ref.current is running and results == [] and readable == [False]
        path.write_text(shipped.replace("quality_target: 0.8", "quality_target: 0.7"))
        await _until(lambda: results == [True])
        assert readable == [False, True]
    finally:
        watcher.cancel()


async def test_an_edit_made_while_the_router_started_is_applied(tmp_path: Path) -> None:
    """The snapshot was built from the old bytes, the file changed before the watcher's first look: the watcher
    compares with what the running config was built from, not with what it saw first."""
    path = tmp_path / "model-router.yaml"
    shipped = (ENVOY_DIR / "model-router.yaml").read_text()
    path.write_text(shipped)
    ref = SnapshotRef(load_snapshot(path, lambda _s: FakeDifficultyModel()))
    path.write_text(shipped.replace("quality_target: 0.8", "quality_target: 0.7"))  # during the model load
    results: list[bool] = []
    watcher = asyncio.create_task(watch_config(path, ref, results.append, 0.01, lambda _s: FakeDifficultyModel()))
    try:
        await _until(lambda: results == [True])
        assert ref.current.settings.policy.quality_target == 0.7
    finally:
        watcher.cancel()


@contextlib.asynccontextmanager
async def _watching(tmp_path: Path) -> AsyncIterator[tuple[Path, str, SnapshotRef, list[bool]]]:
    """The shipped config in ``tmp_path``, its running snapshot, and a watcher polling every 20 ms into a list."""
    path = tmp_path / "model-router.yaml"
    shipped = (ENVOY_DIR / "model-router.yaml").read_text()
    path.write_text(shipped)
    ref = SnapshotRef(load_snapshot(path, lambda _s: FakeDifficultyModel()))
    results: list[bool] = []
    watcher = asyncio.create_task(watch_config(path, ref, results.append, 0.02, lambda _s: FakeDifficultyModel()))
    try:
        yield path, shipped, ref, results
    finally:
        watcher.cancel()


async def test_a_file_still_being_written_is_not_applied_and_a_sighup_reload_is_not_repeated(tmp_path: Path) -> None:
    async with _watching(tmp_path) as (path, shipped, ref, results):
        for n in range(30):  # different (valid) content at every poll: never read twice alike, never applied
            path.write_text(shipped + f"\n# write {n}\n")
            await asyncio.sleep(0.007)
        assert results == []
        await _until(lambda: results == [True])  # it settled: applied once
        await asyncio.sleep(0.1)
        assert results == [True]
        path.write_text(shipped.replace("quality_target: 0.8", "quality_target: 0.6"))
        assert reload_snapshot(path, ref, lambda _s: FakeDifficultyModel())  # what SIGHUP does
        await asyncio.sleep(0.15)
        assert results == [True], "the watcher must not reload what SIGHUP already applied"
        assert ref.current.settings.policy.quality_target == 0.6


async def test_a_content_a_sighup_reload_refused_is_not_refused_again_by_the_watcher(tmp_path: Path) -> None:
    """One invalid edit followed by SIGHUP: one rejection (counted once in config_reloads_total), not two."""
    async with _watching(tmp_path) as (path, shipped, ref, results):
        path.write_text(shipped.replace("quality_target: 0.8", "quality_target: 8"))
        assert not reload_snapshot(path, ref, lambda _s: FakeDifficultyModel())  # what SIGHUP does
        await asyncio.sleep(0.15)
        assert results == [], "the watcher must not refuse again what SIGHUP refused"
        path.write_text(shipped.replace("quality_target: 0.8", "quality_target: 0.7"))
        await _until(lambda: results == [True])  # a fixed file is still picked up
        assert ref.rejected is None


async def _until(check: Callable[[], bool]) -> None:
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


def test_envoy_routes_cover_every_catalog_cluster() -> None:
    """Every catalog cluster has a route in envoy/envoy.yaml, so no decision can hit a missing route."""
    envoy = yaml.safe_load((ENVOY_DIR / "envoy.yaml").read_text())
    clusters = {c["name"] for c in envoy["static_resources"]["clusters"]}
    hcm = envoy["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    routed = {
        r["match"]["headers"][0]["string_match"]["exact"]
        for r in hcm["route_config"]["virtual_hosts"][0]["routes"]
        if "string_match" in r["match"].get("headers", [{}])[0]
    }
    catalog = {m.cluster for m in load_config(ENVOY_DIR / "model-router.yaml").catalog}
    assert catalog <= routed <= clusters


@pytest.mark.parametrize("envoy_yaml", ["envoy/envoy.yaml", "k8s/base/envoy.yaml"])
def test_the_buffered_paths_are_exactly_the_routers_apis(envoy_yaml: str) -> None:
    """The buffer filter (the 4 MiB body limit for every protocol) and ext_proc are on for the route of the router's
    APIs and off on the catch-all, so other paths (file and audio uploads) stream and skip the router: its path regex
    must be the router's paths (the schemas' and their token counts')."""
    envoy = yaml.safe_load((ENVOY_DIR.parent / envoy_yaml).read_text())
    hcm = envoy["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    (api,) = [r for r in routes if "safe_regex" in r["match"]]
    *_, catch_all = routes
    assert catch_all["match"] == {"prefix": "/"} and api["route"] == catch_all["route"]
    per_route = catch_all["typed_per_filter_config"]
    for name in ("request_gzip", "envoy.filters.http.buffer", "envoy.filters.http.ext_proc"):
        assert per_route[name]["disabled"], name
    pattern = re.compile(api["match"]["safe_regex"]["regex"])  # RE2 matches the whole path, as fullmatch does
    assert {p for p in [*ROUTER_PATHS, *_NOT_THE_ROUTERS] if pattern.fullmatch(p)} == ROUTER_PATHS
    # The decompressor, then the buffer filter, whose limit then holds for the inflated body.
    assert [f["name"] for f in hcm["http_filters"][:2]] == ["request_gzip", "envoy.filters.http.buffer"]
    assert hcm["http_filters"][1]["typed_config"]["max_request_bytes"] == 4 * 1024 * 1024


_NOT_THE_ROUTERS = (
    "/v1/chat/completions/",
    "/v1/audio/transcriptions",
    "/x/v1/messages",
    "/v1/embeddings",
    "/v1/messages/batches",
    "/v1/responses/resp_123/input_items",
    "/v1/chat/completions/count_tokens",
)


def _fail_open_lua(envoy_yaml: Path) -> str:
    envoy = yaml.safe_load(envoy_yaml.read_text())
    hcm = envoy["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    (lua,) = (f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.lua")
    return str(lua["typed_config"]["default_source_code"]["inline_string"])


@pytest.mark.parametrize(
    ("envoy_yaml", "router_yaml"),
    [
        pytest.param("envoy/envoy.yaml", "envoy/model-router.yaml", id="envoy"),
        pytest.param("k8s/base/envoy.yaml", "k8s/base/router-config/model-router.yaml", id="k8s-base"),
    ],
)
def test_the_shipped_fail_open_filter_is_generated_from_its_router_config(envoy_yaml: str, router_yaml: str) -> None:
    """Envoy's fail-open filter renames a routable alias to the default model and sends a named catalog model to its
    cluster when the router did not answer: its tables must say what the router config says, or a router outage
    sends "auto" (a 404), the wrong model or a body over Envoy's buffer limit (a 413)."""
    listener = yaml.safe_load((ENVOY_DIR.parent / envoy_yaml).read_text())["static_resources"]["listeners"][0]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    (buffer,) = [f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.buffer"]
    settings = load_config(ENVOY_DIR.parent / router_yaml)
    want = render_fail_open_lua(settings, buffer["typed_config"]["max_request_bytes"])
    assert _fail_open_lua(ENVOY_DIR.parent / envoy_yaml) == want, f"model-router fail-open-lua --config {router_yaml}"


def test_the_fail_open_lua_tables_follow_the_config(tmp_path: Path) -> None:
    """Aliases are the routable names that are no catalog model; odd names are escaped as Lua strings."""
    data = yaml.safe_load((ENVOY_DIR / "model-router.yaml").read_text())
    data["policy"]["routable_models"] = ["auto", "gpt-4o-mini", 'we"ird\\one']
    data["catalog"][0]["cluster"] = "small-v2"
    lua = render_fail_open_lua(parse_config(data), 1000)
    assert 'local ROUTABLE = {\n  ["auto"] = true,\n  ["we\\"ird\\\\one"] = true,\n}\n' in lua
    assert '["llama-3.1-8b-instruct"] = "small-v2",' in lua
    assert "local MAX_BODY_BYTES = 1000\n" in lua
    out = tmp_path / "cfg.yaml"
    out.write_text(yaml.safe_dump(data))
    assert main(["fail-open-lua", "--config", str(out), "--max-body-bytes", "1000"]) == 0


def test_the_readmes_full_example_is_a_valid_config_with_every_key() -> None:
    """README "Configuration": the example names every setting (so a new key must be documented) and validates."""
    readme = (ENVOY_DIR.parent / "README.md").read_text()
    example = readme[readme.index("A full example (") :]
    data = yaml.safe_load(example[example.index("```yaml\n") + 8 : example.index("```\n", 8)])
    parse_config(data)
    for section in ("server", "limits", "telemetry", "feedback", "capture", "classifier", "security", "policy"):
        model = type(getattr(parse_config(data), section))
        missing = set(model.model_fields) - set(data.get(section) or {})
        assert not missing, f"README example lacks {section}.{sorted(missing)}"


LISTENERS = ("server.listen", "telemetry.metrics_listen", "feedback.listen")
"""Every listen address in the config; only ``server.listen`` (gRPC) may be a Unix socket."""
_FORM = "expected host:port ([::1]:port for IPv6){unix}, got {value!r}"
_PORT = "{value!r}: the port must be a number 0..65535"


def _listen_config(field: str, value: str) -> dict[str, object]:
    section, key = field.split(".")
    return base(**{section: {key: value}})


@pytest.mark.parametrize("field", LISTENERS)
@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("localhost", _FORM),  # gRPC listened on 127.0.0.1:443 and [::1]:443
        ("9464", "'9464' has no host; write 127.0.0.1:9464, or 0.0.0.0:9464 for every interface"),  # was 0.0.0.0
        (":9464", "':9464' has no host; write 127.0.0.1:9464, or 0.0.0.0:9464 for every interface"),
        ("127.0.0.1:abc", _PORT),  # was a ValueError traceback at start
        ("127.0.0.1:65536", _PORT),
        ("127.0.0.1:", _PORT),
        ("127.0.0.1:-1", _PORT),
        ("127.0.0.1:+80", _PORT),
        ("127.0.0.1:\u0663", _PORT),  # a digit, but not 0-9
        ("[::1]", _PORT),
        ("::1:9464", _FORM),  # IPv6 needs brackets
        ("[127.0.0.1]:9464", _FORM),
        ("[localhost]:9464", _FORM),
        ("999.0.0.1:9464", _FORM),
        ("127.1:9464", _FORM),
        (" 127.0.0.1:9464", _FORM),
        ("local_host:9464", _FORM),
        ("-host:9464", _FORM),
        ("unix:router.sock", _FORM),  # relative
        ("", _FORM),
    ],
)
def test_a_bad_listen_address_is_named(field: str, value: str, message: str) -> None:
    unix = " or unix:/absolute/path" if field == "server.listen" else ""
    with pytest.raises(ConfigError) as info:
        parse_config(_listen_config(field, value))
    assert info.value.problems == [f"{field}: {message.format(value=value, unix=unix)}"]


@pytest.mark.parametrize(
    ("server", "metrics", "feedback"),
    [
        ("127.0.0.1:7000", "127.0.0.2:7000", "[::1]:7000"),  # one port, three addresses
        ("0.0.0.0:7000", "[::1]:7000", "127.0.0.1:7001"),  # the IPv4 wildcard leaves ::1 free
        ("unix:/run/r.sock", "0.0.0.0:7000", "127.0.0.1:7001"),
        ("127.0.0.1:0", "127.0.0.1:0", "0.0.0.0:0"),  # port 0: each listener gets its own free port
    ],
)
def test_listeners_on_distinct_addresses_are_accepted(server: str, metrics: str, feedback: str) -> None:
    data = base(
        server={"listen": server},
        telemetry={"metrics_listen": metrics},
        feedback={"enabled": True, "path": "/d/fb.jsonl", "listen": feedback},
    )
    assert parse_config(data).feedback.listen == feedback


@pytest.mark.parametrize("field", LISTENERS[1:])
def test_http_endpoints_cannot_listen_on_a_unix_socket(field: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_listen_config(field, "unix:/run/r.sock"))
    assert info.value.problems == [f"{field}: expected host:port ([::1]:port for IPv6), got 'unix:/run/r.sock'"]


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("127.0.0.1:50051", ("127.0.0.1", 50051)),
        ("0.0.0.0:9464", ("0.0.0.0", 9464)),  # every interface, asked for explicitly
        ("[::1]:9465", ("::1", 9465)),
        ("[::]:9465", ("::", 9465)),
        ("[::ffff:127.0.0.1]:1", ("::ffff:127.0.0.1", 1)),
        ("localhost:0", ("localhost", 0)),
        ("router-0.router.svc.cluster.local:65535", ("router-0.router.svc.cluster.local", 65535)),
    ],
)
def test_good_listen_addresses(value: str, parsed: tuple[str, int]) -> None:
    assert parse_listen(value) == parsed
    for field in LISTENERS:
        section, key = field.split(".")
        data = base(server={"listen": "unix:/run/r.sock"}, telemetry={"metrics_listen": None})  # no port to share
        data[section] = {**data.get(section, {}), key: value}  # type: ignore[dict-item]
        assert getattr(getattr(parse_config(data), section), key) == value


def test_server_listen_may_be_a_unix_socket() -> None:
    value = "unix:/var/run/model-router/router.sock"  # k8s/README.md
    assert parse_listen(value, unix=True) is None
    assert parse_config(_listen_config("server.listen", value)).server.listen == value


_SHIPPED_DOCS = ("README.md", "k8s/README.md", "k8s/overlays/envoy-gateway/README.md", "k8s/overlays/istio/README.md")
_SHIPPED_CONFIGS = (
    "envoy/model-router.yaml",
    "k8s/base/router-config/model-router.yaml",
    "k8s/components/router-tls/model-router.yaml",
)


def test_every_shipped_listen_address_is_valid() -> None:
    """The shipped router configs validate, and every address the docs quote for a listener parses."""
    root = ENVOY_DIR.parent
    for name in _SHIPPED_CONFIGS:
        load_config(root / name)
    quoted = {
        address
        for name in (*_SHIPPED_DOCS, *_SHIPPED_CONFIGS)
        for address in re.findall(
            r"[\"`](unix:/[^\"`\s]+|(?:[0-9.]+|\[[0-9a-f:]*\]):[0-9]+)[\"`]", (root / name).read_text()
        )
    }
    assert {"127.0.0.1:50051", "0.0.0.0:50051", "0.0.0.0:9464", "0.0.0.0:9465", "127.0.0.1:9465"} <= quoted
    for address in quoted:
        parse_listen(address, unix=True)


def test_check_config_and_reload_refuse_a_bad_listen_address(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "model-router.yaml"
    shipped = yaml.safe_load((ENVOY_DIR / "model-router.yaml").read_text())
    path.write_text(yaml.safe_dump(shipped))
    ref = SnapshotRef(load_snapshot(path, lambda _s: FakeDifficultyModel()))
    running = ref.current
    shipped["telemetry"]["metrics_listen"] = "9464"
    path.write_text(yaml.safe_dump(shipped))
    assert main(["check-config", "--config", str(path)]) == 2
    problem = "telemetry.metrics_listen: '9464' has no host; write 127.0.0.1:9464, or 0.0.0.0:9464 for every interface"
    assert capsys.readouterr().err == f"model-router: invalid configuration:\n  {problem}\n"
    assert not reload_snapshot(path, ref, lambda _s: FakeDifficultyModel())
    assert ref.current is running


@pytest.mark.parametrize(
    ("changes", "pending"),
    [
        pytest.param({"policy": {"quality_target": 0.7}}, [], id="applies-on-reload"),
        pytest.param({"telemetry": {"log_prompts": True, "response_usage": False}}, [], id="read-per-request"),
        pytest.param({"feedback": {"enabled": True, "path": "/tmp/fb.jsonl"}}, ["feedback.enabled", "feedback.path"]),
        pytest.param(
            {"server": {"decision_api": False, "log_level": "debug"}, "telemetry": {"sampling_ratio": 0.5}},
            ["server.decision_api", "server.log_level", "telemetry.sampling_ratio"],
            id="server-and-telemetry",
        ),
        pytest.param({"limits": {"max_body_bytes": 1 << 20}}, [], id="lowered-body-limit"),
        pytest.param(
            {"limits": {"max_body_bytes": 8 << 20}},
            ["limits.max_body_bytes (above the value at start: larger gRPC messages are refused)"],
            id="raised-body-limit",
        ),
    ],
)
def test_a_reload_says_which_changes_need_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, changes: dict[str, dict[str, object]], pending: list[str]
) -> None:
    """The reload applies, but a key read only at start (feedback turned off during an incident, say) must not look
    applied: the log line names it."""
    path = tmp_path / "model-router.yaml"
    data = yaml.safe_load((ENVOY_DIR / "model-router.yaml").read_text())
    path.write_text(yaml.safe_dump(data))
    ref = SnapshotRef(load_snapshot(path, lambda _s: FakeDifficultyModel()))
    for section, values in changes.items():
        data.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(data))
    caplog.set_level("INFO", logger="model_router.reload")
    assert reload_snapshot(path, ref, lambda _s: FakeDifficultyModel())
    (line,) = [r.getMessage() for r in caplog.records if r.name == "model_router.reload"]
    if pending:
        assert line.endswith("needs a restart to take effect: " + ", ".join(pending)), line
    else:
        assert "restart" not in line, line


@pytest.mark.parametrize(("command_line", "pending"), [(frozenset(), True), (frozenset({"server.listen"}), False)])
def test_a_listen_address_the_command_line_overrides_needs_no_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, command_line: frozenset[str], pending: bool
) -> None:
    """``serve --listen`` wins over ``server.listen``: editing the key changes nothing, even after a restart."""
    path = tmp_path / "model-router.yaml"
    data = yaml.safe_load((ENVOY_DIR / "model-router.yaml").read_text())
    path.write_text(yaml.safe_dump(data))
    ref = SnapshotRef(load_snapshot(path, lambda _s: FakeDifficultyModel()))
    ref.command_line = command_line
    data["server"]["listen"] = "127.0.0.1:19999"
    path.write_text(yaml.safe_dump(data))
    caplog.set_level("INFO", logger="model_router.reload")
    assert reload_snapshot(path, ref, lambda _s: FakeDifficultyModel())
    (line,) = [r.getMessage() for r in caplog.records if r.name == "model_router.reload"]
    assert line.endswith("needs a restart to take effect: server.listen") is pending, line


@pytest.mark.parametrize(
    ("section", "key", "values", "warned"),
    [
        pytest.param(
            "server", "log_level", lambda start: ["debug", "debug", start], [True, True, False], id="log-level"
        ),
        # gRPC's message limit is set at start: back at the start value after a lower one is no restart, and above
        # it stays one however many reloads come in between.
        pytest.param(
            "limits",
            "max_body_bytes",
            lambda start: [start // 2, start, start * 2, start * 2],
            [False, False, True, True],
            id="body-limit",
        ),
    ],
)
def test_the_restart_warning_compares_with_the_settings_at_start(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    section: str,
    key: str,
    values: Callable[[object], list[object]],
    warned: list[bool],
) -> None:
    """What runs is what the router started with: a pending change is said again on each later reload (whatever
    else it changes), and a reload back to the start value needs no restart."""
    path = tmp_path / "model-router.yaml"
    data = yaml.safe_load((ENVOY_DIR / "model-router.yaml").read_text())
    path.write_text(yaml.safe_dump(data))
    ref = SnapshotRef(load_snapshot(path, lambda _s: FakeDifficultyModel()))
    caplog.set_level("INFO", logger="model_router.reload")
    said = []
    for n, value in enumerate(values(data[section][key])):
        data[section][key], data["policy"]["quality_target"] = value, 0.8 - n / 100
        path.write_text(yaml.safe_dump(data))
        caplog.clear()
        assert reload_snapshot(path, ref, lambda _s: FakeDifficultyModel())
        said.append(any(f"{section}.{key}" in r.getMessage() for r in caplog.records))
    assert said == warned


def test_a_reload_that_changes_the_fail_open_tables_says_to_regenerate_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Envoy's fail-open filter carries the default model and the catalog's clusters; after a reload that changes
    them, its copy is stale, which would show only during the next router outage."""
    path = tmp_path / "model-router.yaml"
    data = yaml.safe_load((ENVOY_DIR / "model-router.yaml").read_text())
    path.write_text(yaml.safe_dump(data))
    ref = SnapshotRef(load_snapshot(path, lambda _s: FakeDifficultyModel()))
    data["policy"]["default_model"] = "gpt-4o-mini"
    path.write_text(yaml.safe_dump(data))
    caplog.set_level("INFO", logger="model_router.reload")
    assert reload_snapshot(path, ref, lambda _s: FakeDifficultyModel())
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        "the catalog, policy.routable_models or policy.default_model changed: regenerate Envoy's fail-open filter"
        f" with `model-router fail-open-lua --config {path}`"
    ]


def test_a_reload_that_adds_a_catalog_cluster_names_it_and_the_route_envoy_needs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A valid reload can route to a cluster Envoy has no route for (its requests then fall to the default route and,
    in a review, all got a 404): the router cannot see Envoy's routes, so it says which cluster needs one."""
    path = tmp_path / "model-router.yaml"
    data = yaml.safe_load((ENVOY_DIR / "model-router.yaml").read_text())
    path.write_text(yaml.safe_dump(data))
    ref = SnapshotRef(load_snapshot(path, lambda _s: FakeDifficultyModel()))
    new = {**data["catalog"][0], "name": "new-model", "cluster": "newpool", "ability": 0.0}
    data["catalog"].append(new)
    path.write_text(yaml.safe_dump(data))
    caplog.set_level("WARNING", logger="model_router.reload")
    assert reload_snapshot(path, ref, lambda _s: FakeDifficultyModel())
    assert any(
        r.getMessage().startswith("config reloaded with new catalog cluster(s) newpool: Envoy needs a route")
        for r in caplog.records
    )
    caplog.clear()
    data["policy"]["quality_target"] = 0.7  # the cluster is known now: said once, not at every reload
    path.write_text(yaml.safe_dump(data))
    assert reload_snapshot(path, ref, lambda _s: FakeDifficultyModel())
    assert not any("new catalog cluster" in r.getMessage() for r in caplog.records)


def test_a_reload_reuses_the_loaded_model_until_its_settings_or_files_change(tmp_path: Path) -> None:
    """Every reload loaded the ONNX model again (23% less throughput during a SIGHUP storm in a review)."""
    import os

    from extproc.reload import ReusingLoader

    loads: list[str] = []

    def load(settings: Settings) -> FakeDifficultyModel:
        loads.append(str(settings.classifier.model_dir))
        return FakeDifficultyModel()

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "model.onnx").write_bytes(b"v1")
    settings = load_config(ENVOY_DIR / "model-router.yaml")
    mine = settings.model_copy(update={"classifier": settings.classifier.model_copy(update={"model_dir": model_dir})})
    loader = ReusingLoader(load)
    first = loader(mine)
    assert loader(mine) is first and loader(mine.model_copy()) is first, "same settings and files: same model"
    os.utime(model_dir / "model.onnx", ns=(1, 1))  # retrained into the same directory
    assert loader(mine) is not first
    seeded = FakeDifficultyModel()
    loader.seed(settings, seeded)  # the shipped model loaded at start
    assert loader(settings) is seeded
    assert loads == [str(model_dir), str(model_dir)]


def test_exponents_are_numbers_as_in_yaml_1_2() -> None:
    """PyYAML (YAML 1.1) read ``1e5`` and ``1.5e3`` as strings, which the strict number fields then refused."""
    loaded = load_yaml(Path("c.yaml"), b"a: 1e5\nb: 1.5e3\nc: -2E-3\nd: '1e5'\ne: 127.0.0.1:80\n")
    assert loaded == {"a": 100000.0, "b": 1500.0, "c": -0.002, "d": "1e5", "e": "127.0.0.1:80"}
