// farm_jupyter in JupyterLab: an inline completion provider and a status bar item, both talking
// to the farm_jupyter server extension only (DESIGN.md: labextension -> server/).
import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { MainAreaWidget, Notification, ToolbarButton } from '@jupyterlab/apputils';
import { ICompletionProviderManager } from '@jupyterlab/completer';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { KernelMessage } from '@jupyterlab/services';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { IStatusBar } from '@jupyterlab/statusbar';

import { makeClient } from './client';
import { FarmCompletionProvider } from './completer';
import { HealthBoard, HealthStatus, MIN_SECONDS, boardWidget } from './status';

const PLUGIN = 'farm-jupyter:plugin';
const OPEN_HEALTH = 'farm-jupyter:open-health';
const OPEN_CHAT = 'farm-jupyter:open-chat';
// The chat lives in the kernel (it reads the notebook's variables): the command asks the kernel.
const SIDEBAR_CODE = '%load_ext farm_jupyter\n%farm sidebar';

/** Run `%farm sidebar` in the notebook's kernel; a busy kernel runs it after its cell, and says so. */
function openChat(panel: NotebookPanel | null): void {
  const kernel = panel?.sessionContext.session?.kernel;
  if (!kernel) {
    Notification.warning('farm_jupyter: open a notebook with a running kernel first');
    return;
  }
  if (panel?.sessionContext.kernelDisplayStatus === 'busy') {
    Notification.info('farm_jupyter: the chat opens when the running cell ends (it runs in the kernel)', { autoClose: 6000 });
  }
  kernel.requestExecute({ code: SIDEBAR_CODE, silent: false, store_history: false });
}

const WAITING = 'waiting for the running cell: a message sent now goes when it ends';

/** In each chat of this kernel (the ChatWidget's `farm-kernel-<id>` class), say or unsay that its
 * messages wait: they go through the kernel, which runs one cell at a time. */
function markChats(kernelId: string, running: boolean): void {
  document.querySelectorAll(`.farm-chat.farm-kernel-${CSS.escape(kernelId)}`).forEach(chat => {
    const line = chat.querySelector(':scope > .farm-chat-waiting');
    if (running && line === null) {
      const said = document.createElement('div');
      said.className = 'farm-chat-waiting';
      said.textContent = WAITING;
      chat.append(said);
    } else if (!running && line !== null) {
      line.remove();
    }
  });
}

/** Follow a notebook's kernel: busy or idle because of a cell, not of a chat's own comm messages
 * (the kernel is busy for a moment with each of those too). */
function followKernel(panel: NotebookPanel): void {
  panel.sessionContext.iopubMessage.connect((context, message) => {
    if (!KernelMessage.isStatusMsg(message)) {
      return;
    }
    const parent = message.parent_header as Partial<KernelMessage.IHeader>;
    const id = context.session?.kernel?.id;
    if (id && parent.msg_type === 'execute_request') {
      markChats(id, message.content.execution_state === 'busy');
    }
  });
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN,
  description: 'Completions as you type served by the farm_jupyter server extension, and the providers\' health.',
  autoStart: true,
  requires: [ICompletionProviderManager],
  optional: [ISettingRegistry, IStatusBar, INotebookTracker],
  activate: (
    app: JupyterFrontEnd,
    completions: ICompletionProviderManager,
    registry: ISettingRegistry | null,
    statusBar: IStatusBar | null,
    notebooks: INotebookTracker | null
  ) => {
    const client = makeClient(app.serviceManager.serverSettings);
    const provider = new FarmCompletionProvider(client);
    completions.registerInlineProvider(provider);

    const board = new HealthBoard();
    let shown: MainAreaWidget<HealthBoard> | null = null;
    const status = new HealthStatus(client, () => void app.commands.execute(OPEN_HEALTH));
    app.commands.addCommand(OPEN_HEALTH, {
      label: 'farm_jupyter: Open the Health Board',
      execute: async () => {
        board.show_(await status.refresh());
        if (shown === null || shown.isDisposed) {
          shown = boardWidget(board);
          app.shell.add(shown, 'main');
        }
        app.shell.activateById(shown.id);
      }
    });
    if (notebooks) {
      app.commands.addCommand(OPEN_CHAT, {
        label: 'farm_jupyter: Open the Chat beside the Notebook',
        isEnabled: () => notebooks.currentWidget !== null,
        execute: () => openChat(notebooks.currentWidget)
      });
      notebooks.widgetAdded.connect((_, panel) => {
        const button = new ToolbarButton({
          label: 'farm chat',
          tooltip: 'Open the farm_jupyter chat beside this notebook (%farm sidebar in its kernel)',
          onClick: () => openChat(panel)
        });
        button.addClass('farm-chat-button');
        panel.toolbar.insertItem(10, 'farm-chat', button);
        followKernel(panel);
      });
    }
    if (statusBar) {
      statusBar.registerStatusItem('farm-jupyter:health', { item: status, align: 'left', rank: 50 });
    }

    const apply = (settings: ISettingRegistry.ISettings | null) => {
      provider.setModel(String(settings?.get('model').composite ?? ''));
      status.start(Number(settings?.get('healthSeconds').composite ?? MIN_SECONDS));
    };
    if (registry) {
      registry
        .load(PLUGIN)
        .then(settings => {
          apply(settings);
          settings.changed.connect(() => apply(settings));
        })
        .catch(() => apply(null));
    } else {
      apply(null);
    }
  }
};

export default plugin;
