// Completions as you type: JupyterLab's inline completer asks, the Jupyter server's farm_jupyter
// route answers (never the kernel, so a running cell does not hold them up), streamed into the
// ghost text. Each new request aborts the one before: the server sees the disconnect and cancels
// the provider's request.
import { Notification } from '@jupyterlab/apputils';
import {
  CompletionHandler,
  IInlineCompletionContext,
  IInlineCompletionItem,
  IInlineCompletionList,
  IInlineCompletionProvider,
  InlineCompletionTriggerKind
} from '@jupyterlab/completer';
import { NotebookPanel } from '@jupyterlab/notebook';

import type { CompletionState } from '../../schema/farm_jupyter';
import { FarmApiError, FarmClient, StreamEvent } from '../../schema/farm_jupyter_client';

type Events = StreamEvent<{ message: { text: string }; done: { text: string; model: string; cached: boolean }; error: { error: string } }>;

interface Running {
  text: string;
  events: AsyncGenerator<Events, void, undefined>;
  controller: AbortController;
}

const MAX_CELLS = 50;

function sleep(ms: number): Promise<void> {
  return new Promise(resolve => setTimeout(resolve, ms));
}

// Aborted by the next keystroke: whatever the error says (JupyterLab's server connection wraps an
// abort during the send as a NetworkError), it is not a failure.
function isAbort(err: unknown, controller: AbortController): boolean {
  return controller.signal.aborted || (err instanceof DOMException && err.name === 'AbortError');
}

/** The code cells above the active one, oldest first (the server keeps the nearest of them). */
function cellsAbove(widget: unknown): string[] {
  if (!(widget instanceof NotebookPanel)) return [];
  const notebook = widget.content;
  const cells: string[] = [];
  notebook.widgets.slice(0, notebook.activeCellIndex).forEach(cell => {
    if (cell.model.type === 'code') cells.push(cell.model.sharedModel.getSource());
  });
  return cells.slice(-MAX_CELLS);
}

function language(mimeType: string | undefined): string {
  if (!mimeType || mimeType.includes('python')) return 'python';
  const name = mimeType.split('/').pop()?.replace(/^x-/, '').replace(/[^A-Za-z0-9_+#.-]/g, '') ?? '';
  return name.slice(0, 32) || 'python';
}

export class FarmCompletionProvider implements IInlineCompletionProvider {
  readonly identifier = 'farm-jupyter';
  readonly name = 'farm_jupyter';
  // The server's `[completion] debounce_ms` paces the requests; the Lab adds its own delay only if set.
  readonly schema = { default: { enabled: true, debouncerDelay: 0, timeout: 15000 } };

  private model = '';
  private state: Promise<CompletionState | null> | null = null;
  private noticeShown = false;
  private asked = 0;
  private current: AbortController | null = null;
  private running = new Map<string, Running>();

  constructor(private readonly client: FarmClient) {}

  /** The Lab's model setting (it wins over farm.toml's); asks the server again. */
  setModel(model: string): void {
    this.model = model.trim();
    this.state = null;
    this.noticeShown = false;
  }

  async fetch(request: CompletionHandler.IRequest, context: IInlineCompletionContext): Promise<IInlineCompletionList<IInlineCompletionItem>> {
    const mine = ++this.asked;
    this.current?.abort(); // a new keystroke: the request before is over
    this.current = null;
    const state = await this.ready();
    if (state === null) return { items: [] };
    if (context.triggerKind === InlineCompletionTriggerKind.Automatic && state.debounce_ms > 0) {
      await sleep(state.debounce_ms);
      if (mine !== this.asked) return { items: [] }; // typed on meanwhile
    }
    const controller = new AbortController();
    this.current = controller;
    const events = this.client.complete(
      {
        prefix: request.text.slice(0, request.offset),
        suffix: request.text.slice(request.offset),
        cells: cellsAbove(context.widget),
        model: this.model || null,
        language: language(request.mimeType)
      },
      { signal: controller.signal }
    ) as AsyncGenerator<Events, void, undefined>;
    try {
      for (;;) {
        const next = await events.next();
        if (next.done) return { items: [] };
        const event = next.value;
        if (event.event === 'error') {
          this.turnOff(event.data.error);
          return { items: [] };
        }
        const text = event.event === 'message' ? event.data.text : event.data.text;
        if (!text && event.event === 'message') continue;
        if (event.event === 'done') return { items: text ? [{ insertText: text }] : [] };
        const token = `farm-${mine}`;
        this.running.set(token, { text, events, controller });
        return { items: [{ insertText: text, isIncomplete: true, token }] };
      }
    } catch (err) {
      if (!isAbort(err, controller)) this.failed(err);
      return { items: [] };
    }
  }

  async *stream(token: string): AsyncGenerator<{ response: IInlineCompletionItem }, undefined, unknown> {
    const run = this.running.get(token);
    if (run === undefined) return;
    try {
      for await (const event of run.events) {
        if (event.event === 'message') {
          run.text += event.data.text;
          yield { response: { insertText: run.text, isIncomplete: true } };
        } else if (event.event === 'error') {
          yield { response: { insertText: run.text, error: { message: event.data.error } } };
        }
      }
    } catch (err) {
      if (!isAbort(err, run.controller)) this.failed(err);
    } finally {
      this.running.delete(token);
    }
    return;
  }

  /** What the server says: on, with which model, or off and why (said once). */
  private ready(): Promise<CompletionState | null> {
    if (this.state === null) {
      this.state = this.client
        .completionState(this.model ? { model: this.model } : {})
        .then(state => {
          if (!state.enabled) this.turnOff(state.reason ?? 'inline completion is off on the server');
          return state.enabled ? state : null;
        })
        .catch((err: unknown) => {
          this.turnOff(err instanceof Error ? err.message : String(err));
          return null;
        });
    }
    return this.state;
  }

  private failed(err: unknown): void {
    if (err instanceof FarmApiError && err.status === 429) return; // the server's rate window: wait
    this.turnOff(err instanceof Error ? err.message : String(err));
  }

  /** Off until the settings change or the page reloads, with one notice rather than one a keystroke. */
  private turnOff(reason: string): void {
    this.state = Promise.resolve(null);
    if (this.noticeShown) return;
    this.noticeShown = true;
    Notification.info(`farm_jupyter completions are off: ${reason}`, { autoClose: 8000 });
  }
}
