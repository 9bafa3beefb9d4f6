// farm_jupyter in JupyterLab: an inline completion provider and a status bar item, both talking
// to the farm_jupyter server extension only (DESIGN.md: labextension -> server/).
import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { MainAreaWidget } from '@jupyterlab/apputils';
import { ICompletionProviderManager } from '@jupyterlab/completer';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { IStatusBar } from '@jupyterlab/statusbar';

import { makeClient } from './client';
import { FarmCompletionProvider } from './completer';
import { HealthBoard, HealthStatus, MIN_SECONDS, boardWidget } from './status';

const PLUGIN = 'farm-jupyter:plugin';
const OPEN_HEALTH = 'farm-jupyter:open-health';

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN,
  description: 'Completions as you type served by the farm_jupyter server extension, and the providers\' health.',
  autoStart: true,
  requires: [ICompletionProviderManager],
  optional: [ISettingRegistry, IStatusBar],
  activate: (
    app: JupyterFrontEnd,
    completions: ICompletionProviderManager,
    registry: ISettingRegistry | null,
    statusBar: IStatusBar | null
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
