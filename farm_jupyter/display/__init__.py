"""What the faces draw, once: tables, the live answer, markdown, the pieces of an answer, the
comparison's columns, the theme and the pull progress.

A layer below the faces (`magics/`, `widgets/`, `server/`) and above the Session: a magic and a
widget draw the same answer with the same functions and differ only in where the result goes
(a display output, a widget's value). Standard library and IPython only at import time, so that
`%load_ext` stays instant; markdown-it, pygments and tqdm load on first use.
"""
