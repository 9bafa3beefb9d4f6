// Generated from farm_jupyter/server/schema.py by `farm-jupyter schema`; do not edit.
// Routes under {base_url}farm-jupyter/api/ of a Jupyter server with the farm_jupyter.server extension.

/** One try at one provider: the response lists them all, failed ones first. */
export interface Attempt {
  provider: string;
  model: string;
  ok: boolean;
  error: string | null;
  error_type: string | null;
  retries: number;
  waited: number;
  chunks_before_failure: number;
  step: string | null;
}

/** The body of `POST chat` and `POST chat/stream`: a `prompt` or a list of `messages`. */
export interface ChatBody {
  /** The question, as one user message. */
  prompt?: string | null;
  /** The whole conversation instead of a prompt; the last user message is the question. */
  messages?: ChatMessage[] | null;
  /** "provider:model", a provider, a model or an alias; the environment's default when absent. */
  model?: string | null;
  /** A system message put before the others. */
  system?: string | null;
  params?: GenerationParams;
  /** Neither read nor write the response cache. */
  no_cache?: boolean;
  /** Skip a cached answer, and store the new one. */
  refresh?: boolean;
  /** Try the environment's fallback providers on failure. */
  fallback?: boolean;
}

export interface ChatMessage {
  role: "system" | "user" | "assistant" | "tool";
  content: string;
  images?: ImagePart[];
  tool_calls?: ToolCallInput[];
  tool_call_id?: string | null;
  tool_name?: string | null;
  thinking?: string | null;
}

export interface ChatResponse {
  text: string;
  provider: string;
  model: string;
  usage: Usage;
  timings: Timings;
  finish_reason: string | null;
  cached: boolean;
  restarted: boolean;
  stopped: boolean;
  attempts: Attempt[];
  notice: string | null;
  thinking: string | null;
  tool_calls: ToolCallOutput[];
  tool_runs: ToolRun[];
  reasks: number;
  notes: string[];
  params: Record<string, unknown>;
}

/** The body of `POST complete`: the text around the cursor and the cells above it. */
export interface CompletionBody {
  /** The cell's text before the cursor. */
  prefix: string;
  /** The cell's text after the cursor. */
  suffix?: string;
  /** The code cells above, oldest first. */
  cells?: string[];
  /** The Lab's model setting; the server's `[completion] model` when absent. */
  model?: string | null;
  language?: string;
}

/** The `done` event of `POST complete`: the whole completion, and who gave it. */
export interface CompletionDone {
  text: string;
  /** The "provider:model" that answered (a fallback may differ from the one asked). */
  model: string;
  cached: boolean;
}

/** `GET complete`: whether inline completion is on here, with which model, and why not. */
export interface CompletionState {
  enabled: boolean;
  /** The "provider:model" that completes (the Lab's setting, else farm.toml's). */
  model: string;
  /** Where cell text goes as you type. */
  locality: "local" | "loopback" | "remote";
  /** Why it is off, in one line with what to do; null when on. */
  reason: string | null;
  debounce_ms: number;
  max_tokens: number;
}

/** Every error response (4xx, 5xx) and the `error` event of a stream. */
export interface ErrorBody {
  /** One line: what failed and what to do. */
  error: string;
  /** The body field at fault, dotted ("params.temperature"). */
  field: string | null;
  /** The farm_jupyter error class, for 502s. */
  type: string | null;
  /** What each provider said, when all failed. */
  attempts: Attempt[] | null;
}

export interface GPUDevice {
  index: number;
  name: string;
  memory_used: number;
  memory_total: number;
  utilization: number | null;
  temperature: number | null;
  power: number | null;
  processes: GPUProcess[];
}

export interface GPUProcess {
  pid: number;
  memory_used: number;
  name: string | null;
}

export interface GPUStats {
  source: "nvml" | "torch" | "none";
  devices: GPUDevice[];
  cpu_percent: number | null;
  ram_used: number | null;
  ram_total: number | null;
  reason: string | null;
}

/**
 * The provider-specific generation options `GenerationParams.extra` may hold: a closed set.
 *
 * Each provider takes the ones in `PROVIDER_OPTIONS[its kind]` and leaves the others (they are
 * there for a fallback provider); no key can change the model, the messages or streaming, and no
 * key loads or runs code (HuggingFace's `trust_remote_code`, `custom_generate`, ...).
 */
export interface GenerationOptions {
  top_k?: number;
  min_p?: number;
  typical_p?: number;
  presence_penalty?: number;
  frequency_penalty?: number;
  repeat_penalty?: number;
  logit_bias?: Record<string, number>;
  num_ctx?: number;
  num_keep?: number;
  repeat_last_n?: number;
  mirostat?: 0 | 1 | 2;
  mirostat_tau?: number;
  mirostat_eta?: number;
  penalize_newline?: boolean;
  tfs_z?: number;
  user?: string;
  reasoning_effort?: "minimal" | "low" | "medium" | "high";
  min_new_tokens?: number;
  repetition_penalty?: number;
  no_repeat_ngram_size?: number;
  num_beams?: number;
  length_penalty?: number;
  epsilon_cutoff?: number;
  eta_cutoff?: number;
  suppress_tokens?: number[];
  begin_suppress_tokens?: number[];
  bad_words_ids?: number[][];
  renormalize_logits?: boolean;
  max_time?: number;
  grammar?: string;
}

/**
 * Everything besides the messages that changes an answer (and so belongs in a cache key).
 *
 * `extra` is closed: only `GenerationOptions` keys, each checked for type and range.
 */
export interface GenerationParams {
  temperature?: number | null;
  max_tokens?: number | null;
  top_p?: number | null;
  stop?: string[] | null;
  seed?: number | null;
  format?: "json" | null;
  /** Provider-specific options; each provider takes its own and leaves the rest. */
  extra?: GenerationOptions;
  response_schema?: Record<string, unknown> | null;
  tools?: ToolSpec[] | null;
  tool_choice?: string | null;
  think?: boolean | "low" | "medium" | "high" | null;
}

export interface HealthResponse {
  providers: ProviderStatus[];
  /** The cache backend, or "off: <why>" when it would not open (answers go uncached). */
  cache: string;
}

/** An image for a vision model: base64 bytes, and the one line a text-only model gets instead. */
export interface ImagePart {
  data: string;
  media_type?: string;
  alt?: string;
}

/** The 202 answer of `POST models/{name}/load`. */
export interface LoadStarted {
  /** The name as given in the URL. */
  model: string;
  /** The resolved "provider:model". */
  address: string;
  state: "running" | "done" | "error";
  /** The latest progress line, if any. */
  progress: PullProgress | null;
  error: string | null;
  /** time.time() seconds */
  started_at: number;
  finished_at: number | null;
  /** GET it for the latest LoadStatus. */
  progress_url: string;
}

/** The latest state of a background `POST models/{name}/load`. */
export interface LoadStatus {
  /** The name as given in the URL. */
  model: string;
  /** The resolved "provider:model". */
  address: string;
  state: "running" | "done" | "error";
  /** The latest progress line, if any. */
  progress: PullProgress | null;
  error: string | null;
  /** time.time() seconds */
  started_at: number;
  finished_at: number | null;
}

export interface ModelInfo {
  name: string;
  provider: string;
  size: number | null;
  family: string | null;
  parameter_size: string | null;
  quantization: string | null;
  loaded: boolean;
  details: Record<string, unknown>;
}

export interface ModelSummary {
  address: string;
  requests: number;
  errors: number;
  cache_hits: number;
  p50: number | null;
  p95: number | null;
  first_token_p50: number | null;
  tokens_per_second: number | null;
  tokens_out: number;
}

export interface ModelsResponse {
  models: ModelInfo[];
}

export interface ProviderStatus {
  provider: string;
  state: "healthy" | "unhealthy" | "cooling_down" | "rate_limited" | "unknown";
  url: string | null;
  latency: number | null;
  models_loaded: string[];
  error: string | null;
  version: string | null;
  cooldown_until: number | null;
  checked_at: number;
}

export interface PullProgress {
  status: string;
  digest: string | null;
  total: number | null;
  completed: number | null;
}

export interface StatsResponse {
  /** Per `provider:model`, as `%farm stats` shows them. */
  models: ModelSummary[];
  /** Chat requests this server is answering right now. */
  in_flight: number;
  /** The cache backend (memory, disk, redis, none), or "off: <why>". */
  cache: string;
}

/** A `data:` line of `POST chat/stream`: the text so far is void (restarted on a fallback). */
export interface StreamRestart {
  restart: true;
}

/** A `data:` line of `POST chat/stream`: a note (a retry, a rate-limit wait), not answer text. */
export interface StreamStatus {
  status: string;
}

/** A `data:` line of `POST chat/stream`: new text. */
export interface StreamText {
  text: string;
}

/** Seconds, measured by us around the provider call (not the provider's own claims). */
export interface Timings {
  first_token: number | null;
  total: number;
  waited: number;
  provider_total: number | null;
  rate: number | null;
}

/** A model asking to call one of the tools it was given. */
export interface ToolCallInput {
  id?: string | null;
  name: string;
  arguments?: Record<string, unknown>;
}

/** A model asking to call one of the tools it was given. */
export interface ToolCallOutput {
  id: string | null;
  name: string;
  arguments: Record<string, unknown>;
}

/** One tool call run in the kernel: what was asked, what came back, how long it took. */
export interface ToolRun {
  step: number;
  name: string;
  arguments: Record<string, unknown>;
  result: string;
  error: string | null;
  seconds: number;
}

/** A tool as described to a model: what both protocols call a function. */
export interface ToolSpec {
  name: string;
  description?: string;
  parameters?: Record<string, unknown>;
}

export interface UnloadResponse {
  model: string;
  address: string;
  /** Whether it was loaded (and so was unloaded now); false for one never loaded. */
  unloaded: boolean;
}

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
}

/** Every route, keyed by method and path (relative to `{base_url}farm-jupyter/api/`). */
export interface Routes {
  "POST chat": {
    query: Record<string, never>;
    request: ChatBody;
    response: ChatResponse;
    status: 200;
  };
  "POST chat/stream": {
    query: Record<string, never>;
    request: ChatBody;
    response: string;
    events: {
      message: StreamText | StreamRestart | StreamStatus;
      done: ChatResponse;
      error: ErrorBody;
    };
    status: 200;
  };
  "GET complete": {
    query: {
      /** The Lab's model setting, checked here. */
      model?: string;
    };
    response: CompletionState;
    status: 200;
  };
  "POST complete": {
    request: CompletionBody;
    response: string;
    events: {
      message: StreamText;
      done: CompletionDone;
      error: ErrorBody;
    };
    status: 200;
  };
  "GET models": {
    query: {
      /** Only this provider. */
      provider?: string;
    };
    response: ModelsResponse;
    status: 200;
  };
  "GET health": {
    query: {
      /** Only these providers (repeat the parameter for several). */
      provider?: string | string[];
    };
    response: HealthResponse;
    status: 200;
  };
  "POST models/{name}/load": {
    query: Record<string, never>;
    response: LoadStarted;
    status: 202;
  };
  "GET models/{name}/load": {
    query: Record<string, never>;
    response: LoadStatus;
    status: 200;
  };
  "POST models/{name}/unload": {
    query: Record<string, never>;
    response: UnloadResponse;
    status: 200;
  };
  "GET stats": {
    query: Record<string, never>;
    response: StatsResponse;
    status: 200;
  };
  "GET gpu": {
    query: Record<string, never>;
    response: GPUStats;
    status: 200;
  };
}
