"""The farm_jupyter Jupyter server extension: the kernel's provider router over HTTP.

    pip install farm-jupyter              # enables it (etc/jupyter/jupyter_server_config.d)
    jupyter server extension list         # farm_jupyter.server enabled - OK

Routes live under `{base_url}farm-jupyter/api/` (see `farm_jupyter.server.schema.ROUTES`) and need
the server's token or cookie; their limits are the `FarmServer` traitlets (`c.FarmServer.max_body_size`).
The server holds one process-wide Session, configured like a kernel's (farm.toml and the
environment), so with the disk or Redis cache the server and the kernels share answers. This module stays light: `jupyter server extension list` imports it, and the
handlers (tornado, pydantic, the router) load only when the server loads the extension.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["_jupyter_server_extension_points", "_load_jupyter_server_extension"]


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "farm_jupyter.server"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    from .. import embedded
    from .handlers import setup_handlers
    from .traits import FarmServer

    # Nothing a request does may start a download: not the embedded model's wheel, not a hub id
    # (a fallback onto a local engine whose default is one). A user's explicit setting stands.
    embedded.downloads_allowed = False
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    prefix = setup_handlers(serverapp.web_app, limits=FarmServer(parent=serverapp))
    serverapp.log.info("farm_jupyter: routes at %s", prefix)
    try:
        from ..sessions import session

        farm = session()
        serverapp.log.info(
            "farm_jupyter: env=%s, providers %s, cache %s",
            farm.settings.env,
            " > ".join(farm.settings.chain),
            farm.aio.cache_state,
        )
    except Exception as exc:  # noqa: BLE001 - a bad farm.toml must not stop the Jupyter server
        serverapp.log.error("farm_jupyter: %s (the routes will answer 500 until it is fixed)", exc)
