"""Serial numbers as the CA writes them (the API, the store, its logs): lowercase hex of the
value's full bytes, so always an even number of digits (`06a7...`, never `6a7...`). The same
rule as the server's, written here because the client does not import the server."""

from __future__ import annotations


def serial_hex(serial: int) -> str:
    """The canonical text of a serial number."""
    text = f"{serial:x}"
    return text if len(text) % 2 == 0 else "0" + text


def canonical_serial(text: str) -> str:
    """A serial typed by a person (any case, colons, 0x) in the canonical form."""
    cleaned = text.strip().lower().removeprefix("0x").replace(":", "")
    try:
        return serial_hex(int(cleaned, 16))
    except ValueError:
        raise ValueError(f"serial {text!r} is not hexadecimal") from None
