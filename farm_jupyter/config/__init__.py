"""Layered settings: defaults < farm.toml / [tool.farm] < .env < .env.<environment> < the process
environment < explicit arguments.

Environment names are the ones users already have: OLLAMA_HOST, OPENAI_API_KEY, OPENAI_BASE_URL,
HF_TOKEN; ours are FARM_ENV, FARM_AI_PROVIDER, FARM_FALLBACK, FARM_CACHE, FARM_HF_MODEL. The seed
project's names work as aliases, and ours win where both are set (within one layer): AI_PROVIDER
(FARM_AI_PROVIDER), OLLAMA_URL (OLLAMA_HOST), AI_FALLBACK_PROVIDER (FARM_FALLBACK),
HUGGINGFACE_TOKEN (HF_TOKEN), AI_DEFAULT_MODEL (the default provider's model, unless its own
FARM_OLLAMA_MODEL / FARM_OPENAI_MODEL / FARM_HF_MODEL is set) and AI_RATE_LIMIT (requests per
minute for the default provider).

`.env` files are read with python-dotenv from the folder where the search for farm.toml starts
(the current directory, or `start`), never from its parents, and never copied into os.environ:
`.env`, then `.env.<environment>` over it, where the environment is FARM_ENV from the arguments,
else the process environment, else `.env`, else farm.toml's `env`, else `development`.

`settings.py` holds the sections and how secrets in them are kept; `loading.py` reads and merges
the layers; `urls.py` accepts, splits and masks URLs and keys.
"""

from __future__ import annotations

from .loading import CONFIG_FILE, find_config_file, load_settings
from .settings import (
    BreakerSettings,
    BudgetSettings,
    CacheSettings,
    CompletionSettings,
    Environment,
    HuggingFaceSettings,
    OllamaSettings,
    OpenAISettings,
    Price,
    RateLimit,
    RetrySettings,
    Settings,
    TimeoutSettings,
)
from .urls import BadValue, is_loopback, mask, mask_url, normalize_url, shown_url, split_credentials

__all__ = [
    "CONFIG_FILE",
    "BadValue",
    "BreakerSettings",
    "BudgetSettings",
    "CacheSettings",
    "CompletionSettings",
    "Environment",
    "HuggingFaceSettings",
    "OllamaSettings",
    "OpenAISettings",
    "Price",
    "RateLimit",
    "RetrySettings",
    "Settings",
    "TimeoutSettings",
    "find_config_file",
    "load_settings",
    "is_loopback",
    "mask",
    "mask_url",
    "normalize_url",
    "shown_url",
    "split_credentials",
]
