"""The Lua source of Envoy's fail-open filter, generated from a router config (``model-router fail-open-lua``).

Why generated: the filter runs in Envoy exactly when the router does not answer, so it cannot ask the router which
names are routable aliases, which model is the default and which cluster serves each catalog model: it carries them
as tables. Kept by hand they drift from ``model-router.yaml`` at the first catalog change, and the drift shows only
during an outage (``auto`` renamed to a model no longer served, a new model sent to the default route). The shipped
copies (``envoy/envoy.yaml``, ``k8s/``) are this module's output for their configs, which a test checks.
"""

from __future__ import annotations

import string

from extproc.config import Settings
from extproc.schemas import SCHEMAS_BY_PATH, TOKEN_COUNT_PATHS

__all__ = ["ENVOY_BUFFER_LIMIT", "render_fail_open_lua"]

ENVOY_BUFFER_LIMIT = 4194304
"""The largest body the shipped gateways accept on the router's routes (the buffer filter's ``max_request_bytes``; in
the Istio and Envoy Gateway overlays, which have no buffer filter, the connection buffer): a rename must not push a
body past it."""

_TEMPLATE = string.Template(
    r"""-- Fail-open repair. Every answer of the router sets the dynamic metadata model_router.outcome. Without it the
-- router was not reached (down, too slow, or failed: failure_mode_allow let the request go on unmodified), and
-- the default route would get every request: a routable alias such as "auto", which no upstream serves, and
-- catalog models its provider may not serve. So an alias gets the default model (the default route's), and a
-- catalog model named by the client goes to its own cluster, its body untouched. Generated from model-router.yaml
-- by `model-router fail-open-lua --config FILE`: regenerate it whenever the catalog, policy.routable_models or
-- policy.default_model change (MAX_BODY_BYTES: the largest body Envoy accepts on these routes).
$tables
local MAX_SCAN_STEPS = 200000  -- a body built to be slow stays as it is

-- Index of the quote that closes the JSON string opening at `open`, or nil.
local function string_end(raw, open)
  local i = open + 1
  while true do
    local q = string.find(raw, '["\\]', i)
    if q == nil then return nil end
    if string.byte(raw, q) == 92 then i = q + 2 else return q end
  end
end

-- First and last index (quotes included) of the top-level "model" string value; nil if absent, not a string,
-- given twice (which one an upstream reads is unknown, as the router also says), the body is cut short, or
-- finding it would take more than MAX_SCAN_STEPS strings and brackets.
local function model_span(raw)
  local depth, i, first, last = 0, 1, nil, nil
  for _ = 1, MAX_SCAN_STEPS do
    local p = string.find(raw, '[{}%[%]"]', i)
    if p == nil then
      if depth == 0 then return first, last end
      return nil
    end
    local c = string.byte(raw, p)
    if c == 34 then
      local q = string_end(raw, p)
      if q == nil then return nil end
      local value = depth == 1 and q - p == 6 and string.sub(raw, p, q) == '"model"'
        and string.match(raw, '^[ \t\r\n]*:[ \t\r\n]*()', q + 1)
      if value then
        if first ~= nil or string.byte(raw, value) ~= 34 then return nil end
        q = string_end(raw, value)
        if q == nil then return nil end
        first, last = value, q
      end
      i = q + 1
    else
      depth = (c == 123 or c == 91) and depth + 1 or depth - 1
      i = p + 1
    end
  end
  return nil
end

function envoy_on_request(handle)
  local answered = handle:streamInfo():dynamicMetadata():get("model_router")
  if answered ~= nil and answered.outcome ~= nil then
    return
  end
  local headers = handle:headers()
  local path = string.match(headers:get(":path") or "", "^[^?]*")
  if headers:get(":method") ~= "POST" or not ROUTER_PATHS[path] then
    return
  end
  local body = handle:body()  -- waits for the whole body: wrappers fetched before it are no longer valid
  if body == nil then
    return
  end
  local raw = body:getBytes(0, body:length())
  local first, last = model_span(raw)
  if first == nil then
    return
  end
  local model = string.sub(raw, first + 1, last - 1)
  local metadata = handle:streamInfo():dynamicMetadata()
  if CATALOG[model] ~= nil then
    handle:headers():replace("x-model-router-cluster", CATALOG[model])
    handle:clearRouteCache()
    -- For the fallback filter: a retry on another cluster goes out under this name, and says so.
    metadata:set("model_router", "cluster", CATALOG[model])
    metadata:set("model_router", "fail_open_model", model)
    metadata:set("model_router", "reason", "router_unavailable")
    return
  end
  local renamed = string.sub(raw, 1, first - 1) .. '"' .. DEFAULT_MODEL .. '"' .. string.sub(raw, last + 1)
  if not ROUTABLE[model] or #renamed > MAX_BODY_BYTES then
    return  -- not ours, or Envoy would answer 413 to the longer body: as the client sent it
  end
  body:setBytes(renamed)  -- also sets content-length to the new body's length
  -- Not selected_model: x-model-router-model would tell clients (and the labeller) that the router decided.
  metadata:set("model_router", "fail_open_model", DEFAULT_MODEL)
  metadata:set("model_router", "reason", "router_unavailable")
end
"""
)


def _lua_string(text: str) -> str:
    """``text`` as a Lua string literal: quotes, backslashes and control characters escaped."""
    escaped = "".join(
        "\\" + c if c in '"\\' else f"\\{ord(c):03d}" if ord(c) < 32 or ord(c) == 127 else c for c in text
    )
    return f'"{escaped}"'


def _table(name: str, entries: dict[str, str]) -> str:
    lines = "".join(f"  [{_lua_string(k)}] = {v},\n" for k, v in entries.items())
    return f"local {name} = {{\n{lines}}}"


def render_fail_open_lua(settings: Settings, max_body_bytes: int = ENVOY_BUFFER_LIMIT) -> str:
    """The filter's script for ``settings``: aliases (routable names that are no catalog model), default model,
    each catalog model's cluster, the router's paths and Envoy's buffer limit."""
    catalog = {m.name: _lua_string(m.cluster) for m in settings.catalog}
    aliases = {name: "true" for name in settings.policy.routable_models if name not in catalog}
    tables = "\n".join(
        [
            _table("ROUTABLE", aliases),
            f"local DEFAULT_MODEL = {_lua_string(settings.policy.default_model)}",
            _table("CATALOG", catalog),
            _table("ROUTER_PATHS", {path: "true" for path in [*SCHEMAS_BY_PATH, *sorted(TOKEN_COUNT_PATHS)]}),
            f"local MAX_BODY_BYTES = {max_body_bytes}",
        ]
    )
    return _TEMPLATE.substitute(tables=tables)
