"""The report card: rows (card), Markdown/HTML rendering (render) and its plots."""
