"""Command-line sizes for the benchmarks: ``200k``, ``1m``, ``1.5m`` or a plain integer."""


def parse_size(text: str) -> int:
    text = text.lower().strip()
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)
