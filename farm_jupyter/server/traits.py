"""The server extension's settings: traitlets a Jupyter config file sets (`c.FarmServer.x = ...`)."""

from __future__ import annotations

from traitlets import Float, Int
from traitlets.config import Configurable

MiB = 1024 * 1024


class FarmServer(Configurable):
    """Limits of the farm_jupyter routes (`c.FarmServer.max_body_size = ...` in jupyter_server_config.py)."""

    max_body_size = Int(
        8 * MiB, config=True, help="Largest request body in bytes; a larger one is answered 413 unread."
    )
    max_messages = Int(500, config=True, help="Most messages in one chat request.")
    max_prompt_chars = Int(2_000_000, config=True, help="Most characters in all of a chat request's messages together.")
    max_load_jobs = Int(32, config=True, help="Most load jobs kept; finished ones go first, then none start.")
    load_job_ttl = Float(600.0, config=True, help="Seconds a finished load job stays readable.")
    heartbeat = Float(15.0, config=True, help="Seconds of silence after which a stream sends a `: keep-alive` comment.")
