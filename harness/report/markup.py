"""The HTML building blocks every page shares: the inline style, tables, images and the page frame.

No script, no request to the network: styles inline, images as ``data:`` URIs.
"""

from __future__ import annotations

import html

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f0f0f0; } td.text, th.text { text-align: left; }
tr.selected { font-weight: bold; background: #eef8ee; }
img { max-width: 100%; margin: 0.4em 0.4em 0.4em 0; } div.scroll { overflow-x: auto; }
p.note { color: #555; font-size: 0.9em; }
"""


def e(text: object) -> str:
    return html.escape(str(text))


def table(header: list[str], rows: list[list[str]], css: str, selected: list[bool] | None = None,
          text_columns: tuple[int, ...] = (0,)) -> str:
    head = "".join(f'<th class="{"text" if i in text_columns else ""}">{e(h)}</th>' for i, h in enumerate(header))
    body = []
    for n, row in enumerate(rows):
        cls = ' class="selected"' if selected and selected[n] else ""
        cells = "".join(f'<td class="{"text" if i in text_columns else ""}">{e(c)}</td>' for i, c in enumerate(row))
        body.append(f"<tr{cls}>{cells}</tr>")
    return (f'<div class="scroll"><table class="{css}"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def image(uri: str, alt: str, ident: str | None = None) -> str:
    return f'<img src="{uri}" alt="{e(alt)}"' + (f' id="{e(ident)}"' if ident else "") + ">"


def note(text: str) -> str:
    return f'<p class="note">{e(text)}</p>'


def page(title: str, body: list[str]) -> str:
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{e(title)}</title><link rel=\"icon\" href=\"data:,\"><style>{STYLE}</style></head>"
            f"<body>{''.join(body)}</body></html>\n")
