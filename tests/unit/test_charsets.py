from __future__ import annotations

import codecs

import pytest

from filewallball.adapters.charsets import NormalizerCharsetDecoder

decoder = NormalizerCharsetDecoder()


@pytest.mark.parametrize(
    ("text", "encoding"),
    [
        ("Ça coûte 5 €, très cher à Zürich.\n", "cp1252"),
        ("Příliš žluťoučký kůň úpěl ďábelské ódy.\n" * 2, "cp1250"),
        ("日本語のテキストです。文字コードの確認。\n" * 2, "shift_jis"),
    ],
)
def test_legacy_charsets_are_transcoded(text: str, encoding: str) -> None:
    decoded = decoder.decode(text.encode(encoding), complete=True)
    assert decoded is not None
    assert decoded[0] == text


def test_utf8_cut_mid_character_keeps_whole_characters() -> None:
    data = "añb€".encode()[:-1]  # the euro sign cut after two of its three bytes
    assert decoder.decode(data, complete=False) == ("añb", "utf-8")


def test_utf16_with_a_bom_is_text_and_nul_bytes_otherwise_are_binary() -> None:
    wide = codecs.BOM_UTF16_LE + "wide text".encode("utf-16-le")
    decoded = decoder.decode(wide, complete=True)
    assert decoded is not None
    assert "wide text" in decoded[0]
    assert decoder.decode(b"\x89PNG\x00\x00\x00\rIHDR", complete=True) is None
