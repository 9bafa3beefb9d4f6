"""`{name}` in a `%%farm_chat` prompt, filled from the notebook's namespace without eval."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from IPython.core.error import UsageError

from ..context import Collector
from ..fields import FieldError, FieldFormatter, Source

RAW_HINT = "or %%farm_chat --raw to send the cell as written"
_NOTEBOOK = Source(escape=RAW_HINT)


def interpolate(
    template: str, namespace: Mapping[str, Any], *, what: str = "prompt", collector: Collector | None = None
) -> str:
    """Fill `{name}`, `{obj.attr}`, `{d[key]}`, `{Out[3]}` from `namespace`, like `str.format`.

    With a `collector`, a field without a format spec or conversion is the object's description
    for a model (a DataFrame's shape, dtypes and first rows; a figure's stand-in, its image kept by
    the collector); `{x!s}` is plain `str(x)` as before.

    Nothing is evaluated: a field is a name followed by attribute and index lookups (`d['k']`
    and `d["k"]` look up the string k), with an optional `!r`/`!s` conversion and a format spec.
    `{{` and `}}` are literal braces. Any problem is a one-line `UsageError` that quotes the
    field as written and names `what` holds it ("prompt", "system text (-s)").
    """
    formatter = FieldFormatter(namespace, what, collector, _NOTEBOOK)
    try:
        return formatter.vformat(template, (), {})
    except FieldError as exc:
        raise UsageError(str(exc)) from None
    except (ValueError, IndexError, KeyError, TypeError) as exc:
        raise UsageError(
            f"{what} has a brace problem ({exc}); write {{{{ and }}}} for literal braces, {RAW_HINT}"
        ) from None
    except RecursionError:
        raise UsageError(f"{what} nests format fields too deeply; {RAW_HINT}") from None
