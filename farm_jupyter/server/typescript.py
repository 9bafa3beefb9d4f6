"""TypeScript from the server's JSON Schema: declarations (`farm_jupyter.d.ts`) and a small client
(`farm_jupyter_client.ts`), both from `schema.json_schema()` and so from the one route table.

The converter is deliberately small: it handles what our schema uses (objects with
required/optional properties, arrays, `enum`/`const`, `anyOf`/`oneOf`, nullable, `$ref` into
`$defs`, `additionalProperties` maps) and raises on any other keyword that would change a type,
rather than widen it to `any`.

The client has one method per route (its `name` in the table): plain routes return their typed
answer or throw a `FarmApiError` carrying the ErrorBody; a route with `events` (the stream) is an
async iterator over its server-sent events that ends with `done` and closes the connection when
the caller stops early or aborts. `loadProgress` follows a load until it is done.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["SchemaError", "client", "typescript"]


# Keywords that only annotate or constrain values: they never change the TypeScript type.
_ANNOTATIONS = frozenset(
    {
        "title",
        "description",
        "default",
        "examples",
        "format",
        "deprecated",
        "readOnly",
        "writeOnly",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "minLength",
        "maxLength",
        "pattern",
        "minItems",
        "maxItems",
        "uniqueItems",
    }
)
_SCALARS = {"string": "string", "integer": "number", "number": "number", "boolean": "boolean", "null": "null"}
_IDENTIFIER = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$]*$")


GENERATED = "// Generated from farm_jupyter/server/schema.py by `farm-jupyter schema`; do not edit."


class SchemaError(ValueError):
    """The schema uses something the TypeScript converter does not translate."""


def _literal(value: Any) -> str:
    if value is None or isinstance(value, bool | int | float | str):
        return json.dumps(value, ensure_ascii=False)
    raise SchemaError(f"cannot write {value!r} as a TypeScript literal type")


def _union(parts: list[str]) -> str:
    unique = list(dict.fromkeys(parts))
    if "unknown" in unique:
        return "unknown"
    return " | ".join(unique) if unique else "never"


def _key(name: str) -> str:
    return name if _IDENTIFIER.match(name) else json.dumps(name)


def _comment(text: str | None, indent: str) -> list[str]:
    if not text:
        return []
    lines = text.replace("*/", "*\\/").strip().splitlines()
    if len(lines) == 1:
        return [f"{indent}/** {lines[0]} */"]
    return [f"{indent}/**", *(f"{indent} * {line}".rstrip() for line in lines), f"{indent} */"]


class _Converter:
    def __init__(self, defs: Mapping[str, Any]) -> None:
        self.defs = defs

    def type_of(self, schema: Any, indent: str = "") -> str:
        """The TypeScript type for one schema node (inline)."""
        if schema is True or schema == {}:
            return "unknown"
        if schema is False:
            return "never"
        if not isinstance(schema, Mapping):
            raise SchemaError(f"a schema must be an object or a boolean, not {schema!r}")
        unknown = (
            set(schema)
            - _ANNOTATIONS
            - {
                "$ref",
                "type",
                "enum",
                "const",
                "anyOf",
                "oneOf",
                "allOf",
                "items",
                "properties",
                "required",
                "additionalProperties",
                "discriminator",
            }
        )
        if unknown:
            raise SchemaError(f"unsupported JSON Schema keyword(s): {', '.join(sorted(unknown))}")
        if "$ref" in schema:
            return self._ref(schema["$ref"])
        if "const" in schema:
            return _literal(schema["const"])
        if "enum" in schema:
            return _union([_literal(v) for v in schema["enum"]])
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return _union([self.type_of(s, indent) for s in schema[key]])
        if "allOf" in schema:
            parts = [self.type_of(s, indent) for s in schema["allOf"]]
            return " & ".join(f"({p})" if "|" in p else p for p in parts)
        kind = schema.get("type")
        if isinstance(kind, list):
            return _union([self.type_of({**schema, "type": k}, indent) for k in kind])
        if kind == "array":
            item = self.type_of(schema.get("items", {}), indent)
            return f"({item})[]" if re.search(r"[|&]", item) else f"{item}[]"
        if kind == "object" or "properties" in schema or "additionalProperties" in schema:
            return self._object(schema, indent)
        if kind in _SCALARS:
            return _SCALARS[kind]
        if kind is None:
            return "unknown"
        raise SchemaError(f"unsupported JSON Schema type {kind!r}")

    def _ref(self, ref: str) -> str:
        prefix = "#/$defs/"
        if not ref.startswith(prefix) or ref[len(prefix) :] not in self.defs:
            raise SchemaError(f"unresolvable $ref {ref!r}: only {prefix}<Name> into $defs is supported")
        return ts_name(ref[len(prefix) :])

    def _object(self, schema: Mapping[str, Any], indent: str) -> str:
        props: Mapping[str, Any] = schema.get("properties", {})
        extra = schema.get("additionalProperties", True if not props else False)
        if not props:
            if extra is False:
                return "Record<string, never>"
            return f"Record<string, {self.type_of(extra, indent)}>"
        return "{\n" + "\n".join(self.members(schema, indent + "  ")) + f"\n{indent}}}"

    def members(self, schema: Mapping[str, Any], indent: str) -> list[str]:
        props: Mapping[str, Any] = schema.get("properties", {})
        required = set(schema.get("required", []))
        lines: list[str] = []
        for name, prop in props.items():
            lines += _comment(prop.get("description") if isinstance(prop, Mapping) else None, indent)
            optional = "" if name in required else "?"
            lines.append(f"{indent}{_key(name)}{optional}: {self.type_of(prop, indent)};")
        extra = schema.get("additionalProperties", False)
        if extra is not False:
            # TypeScript wants every named property's type to fit the index signature too
            # (and `undefined`, for an optional one).
            types = [self.type_of(extra, indent), *(self.type_of(p, indent) for p in props.values())]
            if set(props) - required:
                types.append("undefined")
            lines.append(f"{indent}[key: string]: {_union(types)};")
        return lines

    def declaration(self, name: str, schema: Mapping[str, Any]) -> list[str]:
        lines = _comment(schema.get("description"), "")
        combined = any(k in schema for k in ("anyOf", "oneOf", "allOf", "$ref", "enum", "const"))
        if schema.get("properties") and not combined:
            return [*lines, f"export interface {name} {{", *self.members(schema, "  "), "}"]
        return [*lines, f"export type {name} = {self.type_of(schema)};"]


def ts_name(name: str) -> str:
    """A `$defs` name as a TypeScript identifier: pydantic splits a model whose input and output
    differ into `ToolCall-Input` / `ToolCall-Output`; they become `ToolCallInput` / `ToolCallOutput`."""
    return re.sub(r"[^A-Za-z0-9_$]", "", name)


def typescript(schema: Mapping[str, Any]) -> str:
    """TypeScript declarations for `schema` (the server's: `schema.json_schema()`): one per `$defs`
    entry, plus a `Routes` interface when the schema has an `x-routes` table."""
    defs: Mapping[str, Any] = schema.get("$defs", {})
    conv = _Converter(defs)
    out = [
        GENERATED,
        *(f"// {line}" for line in str(schema.get("description", "")).splitlines() if line),
        "",
    ]
    for name in sorted(defs):
        out += conv.declaration(ts_name(name), defs[name])
        out.append("")
    routes = schema.get("x-routes")
    if routes:
        out += [
            "/** Every route, keyed by method and path (relative to `{base_url}farm-jupyter/api/`). */",
            "export interface Routes {",
        ]
        for route in routes:
            key = f"{route['method']} {route['path']}"
            fields = []
            for part in ("query", "request", "response", "events"):
                if part in route:
                    fields.append(f"{part}: {conv.type_of(route[part], '    ')};")
            status = route.get("status", 200)
            fields.append(f"status: {status};")
            out.append(f"  {json.dumps(key)}: {{")
            out += [f"    {f}" for f in fields]
            out.append("  };")
        out += ["}", ""]
    return "\n".join(out)


# -- the client -------------------------------------------------------------------------------

_CLIENT_RUNTIME = r"""
/** Where the server is and how to prove who we are. */
export interface ClientOptions {
  /** The Jupyter server's URL including its base_url, e.g. `http://127.0.0.1:8888/`. */
  baseUrl: string;
  /** The server's token (`Authorization: token ...`); in JupyterLab the login cookie works instead. */
  token?: string | undefined;
  /** The `_xsrf` cookie's value, for cookie-authenticated POSTs from a browser. */
  xsrf?: string | undefined;
  /** A fetch to use instead of the global one. */
  fetch?: typeof fetch | undefined;
}

/** What each call may add: an AbortSignal cancels it (a stream's server sees the disconnect). */
export interface CallOptions {
  signal?: AbortSignal | undefined;
}

/** Every non-2xx answer: `status` and the server's ErrorBody (`error` is one line saying what to do). */
export class FarmApiError extends Error {
  readonly status: number;
  readonly body: ErrorBody;
  constructor(status: number, body: ErrorBody) {
    super(body.error);
    this.name = "FarmApiError";
    this.status = status;
    this.body = body;
  }
}

type EventTypes = { message: unknown; done: unknown; error: unknown };
/** One server-sent event of a streaming route (`streamChat`'s by default). */
export type StreamEvent<E extends EventTypes = Routes["POST chat/stream"]["events"]> =
  | { event: "message"; data: E["message"] }
  | { event: "done"; data: E["done"] }
  | { event: "error"; data: E["error"] };

type Query = Record<string, string | string[] | undefined>;

export class FarmClientBase {
  protected readonly options: ClientOptions;
  private readonly root: string;

  constructor(options: ClientOptions) {
    this.options = options;
    this.root = options.baseUrl.replace(/\/*$/, "/") + API_PREFIX;
  }

  protected url(path: string, query?: Query): string {
    const url = new URL(path, this.root);
    for (const [key, value] of Object.entries(query ?? {})) {
      for (const one of Array.isArray(value) ? value : value === undefined ? [] : [value]) {
        url.searchParams.append(key, one);
      }
    }
    return url.toString();
  }

  protected async send(method: string, path: string, body: unknown, query: Query | undefined, call: CallOptions): Promise<Response> {
    const headers: Record<string, string> = { Accept: "application/json" };
    if (this.options.token) headers["Authorization"] = `token ${this.options.token}`;
    if (this.options.xsrf) headers["X-XSRFToken"] = this.options.xsrf;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const init: RequestInit = { method, headers, credentials: "same-origin" };
    if (body !== undefined) init.body = JSON.stringify(body);
    if (call.signal !== undefined) init.signal = call.signal;
    const response = await (this.options.fetch ?? fetch)(this.url(path, query), init);
    if (!response.ok) throw await FarmClientBase.error(response);
    return response;
  }

  protected async json<T>(method: string, path: string, body: unknown, query: Query | undefined, call: CallOptions): Promise<T> {
    const response = await this.send(method, path, body, query, call);
    return (await response.json()) as T;
  }

  protected async *events<E extends EventTypes>(path: string, body: unknown, call: CallOptions): AsyncGenerator<StreamEvent<E>, void, undefined> {
    const response = await this.send("POST", path, body, undefined, call);
    if (response.body === null) throw new FarmApiError(response.status, { error: "the stream had no body", field: null, type: null, attempts: null });
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        buffer += decoder.decode(value, { stream: true });
        let end: number;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          let event = "message";
          const data: string[] = [];
          for (const line of block.split("\n")) {
            if (line.startsWith("event:")) event = line.slice(6).trim();
            else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
          }
          const text = data.join("\n");
          if (text === "[DONE]") return;
          if (data.length) yield { event, data: JSON.parse(text) } as StreamEvent<E>;
        }
      }
    } finally {
      // Stopped early (break, throw, abort): closing the body is the disconnect the server acts on.
      await reader.cancel().catch(() => undefined);
    }
  }

  private static async error(response: Response): Promise<FarmApiError> {
    const text = await response.text();
    try {
      return new FarmApiError(response.status, JSON.parse(text) as ErrorBody);
    } catch {
      return new FarmApiError(response.status, { error: `HTTP ${response.status}: ${text.slice(0, 200)}`, field: null, type: null, attempts: null });
    }
  }
}
"""

_CLIENT_TAIL = r"""
  /** Start a load (or join the one running) and yield its status until it is done or failed. */
  async *loadProgress(name: string, intervalMs = 250, call: CallOptions = {}): AsyncGenerator<LoadStatus, LoadStatus, undefined> {
    let status: LoadStatus = await this.load(name, call);
    yield status;
    while (status.state === "running") {
      await new Promise((resolve) => setTimeout(resolve, intervalMs));
      status = await this.loadStatus(name, call);
      yield status;
    }
    return status;
  }
}
"""


def _method(route: Mapping[str, Any]) -> list[str]:
    key = f"{route['method']} {route['path']}"
    types = f"Routes[{json.dumps(key)}]"
    params = re.findall(r"\{(\w+)\}", route["path"])
    args = [f"{p}: string" for p in params]
    path = json.dumps(route["path"])
    for p in params:
        path += f".replace({json.dumps('{' + p + '}')}, encodeURIComponent({p}))"
    body = "undefined"
    if "request" in route:
        args.append(f'body: {types}["request"]')
        body = "body"
    query = "undefined"
    if route.get("query", {}).get("properties"):
        args.append(f'query: {types}["query"] = {{}}')
        query = "query"
    args.append("call: CallOptions = {}")
    signature = ", ".join(args)
    doc = f"  /** `{key}` */"
    if "events" in route:
        return [
            doc,
            f'  {route["name"]}({signature}): AsyncGenerator<StreamEvent<{types}["events"]>, void, undefined> {{',
            f'    return this.events<{types}["events"]>({path}, {body}, call);',
            "  }",
        ]
    return [
        doc,
        f'  {route["name"]}({signature}): Promise<{types}["response"]> {{',
        f'    return this.json<{types}["response"]>({json.dumps(route["method"])}, {path}, {body}, {query}, call);',
        "  }",
    ]


def client(schema: Mapping[str, Any]) -> str:
    """`farm_jupyter_client.ts`: a typed client with one method per route of the schema's table."""
    routes = schema.get("x-routes") or []
    lines = [
        GENERATED,
        "// A typed client for the farm_jupyter server extension: fetch and server-sent events, no dependencies.",
        'import type { ErrorBody, LoadStatus, Routes } from "./farm_jupyter";',
        "",
        f"export const API_PREFIX = {json.dumps(schema.get('x-prefix', ''))};",
        _CLIENT_RUNTIME.strip("\n"),
        "",
        "/** One method per route of the server (generated from its route table). */",
        "export class FarmClient extends FarmClientBase {",
    ]
    for route in routes:
        lines += _method(route)
    lines.append(_CLIENT_TAIL.strip("\n"))
    return "\n".join(lines) + "\n"
