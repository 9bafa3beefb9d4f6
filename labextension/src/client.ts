// The generated client (schema/farm_jupyter_client.ts), talking through JupyterLab's own server
// connection: its base URL, token and XSRF cookie.
import { ServerConnection } from '@jupyterlab/services';

import { FarmClient } from '../../schema/farm_jupyter_client';

export function makeClient(settings: ServerConnection.ISettings = ServerConnection.makeSettings()): FarmClient {
  return new FarmClient({
    baseUrl: settings.baseUrl,
    fetch: (input, init) => ServerConnection.makeRequest(String(input), init ?? {}, settings)
  });
}
