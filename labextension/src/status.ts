// The providers' health at a glance: the server's health route, asked at most every 30 s (and
// when clicked), shown in the status bar; a click opens the health board.
import { MainAreaWidget } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';

import type { HealthResponse } from '../../schema/farm_jupyter';
import { FarmClient } from '../../schema/farm_jupyter_client';

export const MIN_SECONDS = 30;

function summary(health: HealthResponse): { text: string; state: string } {
  const down = health.providers.filter(p => p.state === 'unhealthy' || p.state === 'cooling_down');
  const up = health.providers.length - down.length;
  if (down.length === 0) return { text: `farm: ${up} up`, state: 'ok' };
  const names = down.map(p => p.provider).join(', ');
  return { text: `farm: ${names} down`, state: up ? 'degraded' : 'down' };
}

export class HealthStatus extends Widget {
  private timer: number | undefined;
  last: HealthResponse | null = null;

  constructor(private readonly client: FarmClient, private readonly open: () => void) {
    super({ node: document.createElement('span') });
    this.addClass('farm-status');
    this.node.textContent = 'farm: …';
    this.node.title = 'farm_jupyter providers: click for the health board';
    this.node.addEventListener('click', () => this.open());
  }

  /** Ask now, then every `seconds` (30 at the least). */
  start(seconds: number): void {
    window.clearInterval(this.timer);
    void this.refresh();
    this.timer = window.setInterval(() => void this.refresh(), Math.max(MIN_SECONDS, seconds) * 1000);
  }

  async refresh(): Promise<HealthResponse | null> {
    try {
      this.last = await this.client.health();
      const { text, state } = summary(this.last);
      this.node.textContent = text;
      this.node.dataset.state = state;
    } catch (err) {
      this.node.textContent = 'farm: server route unreachable';
      this.node.dataset.state = 'down';
      this.last = null;
    }
    return this.last;
  }

  dispose(): void {
    window.clearInterval(this.timer);
    super.dispose();
  }
}

/** The health board: one row per provider (server), with its state, address, latency and error. */
export class HealthBoard extends Widget {
  constructor() {
    super();
    this.addClass('farm-health-panel');
    this.id = 'farm-jupyter-health';
    this.title.label = 'farm health';
    this.title.closable = true;
  }

  show_(health: HealthResponse | null): void {
    const table = document.createElement('table');
    const head = table.insertRow();
    for (const name of ['provider', 'state', 'url', 'latency', 'error']) {
      const th = document.createElement('th');
      th.textContent = name;
      head.appendChild(th);
    }
    for (const p of health?.providers ?? []) {
      const row = table.insertRow();
      row.dataset.state = p.state;
      for (const value of [p.provider, p.state, p.url ?? '', p.latency === null ? '' : `${Math.round(p.latency * 1000)} ms`, p.error ?? '']) {
        row.insertCell().textContent = value;
      }
    }
    const cache = document.createElement('p');
    cache.textContent = health ? `cache: ${health.cache}` : 'the farm_jupyter server route did not answer';
    this.node.replaceChildren(table, cache);
  }
}

export function boardWidget(board: HealthBoard): MainAreaWidget<HealthBoard> {
  const widget = new MainAreaWidget({ content: board });
  widget.id = 'farm-jupyter-health-board';
  widget.title.label = 'farm health';
  widget.title.closable = true;
  return widget;
}
