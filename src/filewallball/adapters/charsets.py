"""Charset detection for text previews with charset-normalizer."""

from __future__ import annotations

import codecs

from charset_normalizer import from_bytes

from filewallball.domain.ports import CharsetDecoder

# UTF-16/32 text has NUL bytes by nature; anything else with NULs is binary.
_WIDE_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE, codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)


_WESTERN_TOLERANCE = 0.15


class NormalizerCharsetDecoder(CharsetDecoder):
    """UTF-8 when the bytes are UTF-8; else the charset charset-normalizer finds most likely."""

    def decode(self, data: bytes, *, complete: bool) -> tuple[str, str] | None:
        if b"\x00" in data and not data.startswith(_WIDE_BOMS):
            return None
        try:
            # A cut may split a multi-byte character: the incremental decoder holds it back.
            text = codecs.getincrementaldecoder("utf-8-sig")("strict").decode(data, final=complete)
        except UnicodeDecodeError:
            pass
        else:
            return text, "utf-8"
        matches = from_bytes(data)
        best = matches.best()
        if best is None:
            return None
        encoding = best.encoding
        # On short Western text the single-byte code pages score alike and the detector's pick
        # among them is arbitrary (cp1257 for French, say): prefer the far commoner cp1252 then.
        western = next((m for m in matches if m.encoding == "cp1252"), None)
        if western is not None and western.chaos <= best.chaos + _WESTERN_TOLERANCE:
            encoding = "cp1252"
        encoding = codecs.lookup(encoding).name
        decoder = codecs.getincrementaldecoder(encoding)("replace")
        return decoder.decode(data, final=complete), encoding
