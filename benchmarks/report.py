"""The two helpers every section's Markdown renderer uses (each section's `markdown(section)` lives in its module)."""

from __future__ import annotations


def fmt(x, spec=".1f", missing="-") -> str:
    """`x` formatted with `spec`, or `missing` for None."""
    return missing if x is None else format(x, spec)


def table(header: list[str], rows: list[list]) -> list[str]:
    """A Markdown table, one string per line."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(map(str, r)) + " |" for r in rows
    ]
