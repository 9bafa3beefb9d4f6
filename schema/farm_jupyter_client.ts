// Generated from farm_jupyter/server/schema.py by `farm-jupyter schema`; do not edit.
// A typed client for the farm_jupyter server extension: fetch and server-sent events, no dependencies.
import type { ErrorBody, LoadStatus, Routes } from "./farm_jupyter";

export const API_PREFIX = "farm-jupyter/api/";
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

/** One method per route of the server (generated from its route table). */
export class FarmClient extends FarmClientBase {
  /** `POST chat` */
  chat(body: Routes["POST chat"]["request"], call: CallOptions = {}): Promise<Routes["POST chat"]["response"]> {
    return this.json<Routes["POST chat"]["response"]>("POST", "chat", body, undefined, call);
  }
  /** `POST chat/stream` */
  streamChat(body: Routes["POST chat/stream"]["request"], call: CallOptions = {}): AsyncGenerator<StreamEvent<Routes["POST chat/stream"]["events"]>, void, undefined> {
    return this.events<Routes["POST chat/stream"]["events"]>("chat/stream", body, call);
  }
  /** `GET complete` */
  completionState(query: Routes["GET complete"]["query"] = {}, call: CallOptions = {}): Promise<Routes["GET complete"]["response"]> {
    return this.json<Routes["GET complete"]["response"]>("GET", "complete", undefined, query, call);
  }
  /** `POST complete` */
  complete(body: Routes["POST complete"]["request"], call: CallOptions = {}): AsyncGenerator<StreamEvent<Routes["POST complete"]["events"]>, void, undefined> {
    return this.events<Routes["POST complete"]["events"]>("complete", body, call);
  }
  /** `GET models` */
  models(query: Routes["GET models"]["query"] = {}, call: CallOptions = {}): Promise<Routes["GET models"]["response"]> {
    return this.json<Routes["GET models"]["response"]>("GET", "models", undefined, query, call);
  }
  /** `GET health` */
  health(query: Routes["GET health"]["query"] = {}, call: CallOptions = {}): Promise<Routes["GET health"]["response"]> {
    return this.json<Routes["GET health"]["response"]>("GET", "health", undefined, query, call);
  }
  /** `POST models/{name}/load` */
  load(name: string, call: CallOptions = {}): Promise<Routes["POST models/{name}/load"]["response"]> {
    return this.json<Routes["POST models/{name}/load"]["response"]>("POST", "models/{name}/load".replace("{name}", encodeURIComponent(name)), undefined, undefined, call);
  }
  /** `GET models/{name}/load` */
  loadStatus(name: string, call: CallOptions = {}): Promise<Routes["GET models/{name}/load"]["response"]> {
    return this.json<Routes["GET models/{name}/load"]["response"]>("GET", "models/{name}/load".replace("{name}", encodeURIComponent(name)), undefined, undefined, call);
  }
  /** `POST models/{name}/unload` */
  unload(name: string, call: CallOptions = {}): Promise<Routes["POST models/{name}/unload"]["response"]> {
    return this.json<Routes["POST models/{name}/unload"]["response"]>("POST", "models/{name}/unload".replace("{name}", encodeURIComponent(name)), undefined, undefined, call);
  }
  /** `GET stats` */
  stats(call: CallOptions = {}): Promise<Routes["GET stats"]["response"]> {
    return this.json<Routes["GET stats"]["response"]>("GET", "stats", undefined, undefined, call);
  }
  /** `GET gpu` */
  gpu(call: CallOptions = {}): Promise<Routes["GET gpu"]["response"]> {
    return this.json<Routes["GET gpu"]["response"]>("GET", "gpu", undefined, undefined, call);
  }
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
