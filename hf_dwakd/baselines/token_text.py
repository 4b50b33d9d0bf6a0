"""The text each token id stands for, as raw bytes, so that two tokenizers' vocabularies can be compared.

Byte-level BPE (GPT-2, Qwen, Llama 3) spells bytes with printable stand-in characters ("Ġ" is a space);
SentencePiece-style vocabularies (Llama 2, Mistral, Gemma) write a space as "▁" and unknown bytes as "<0xNN>".
Undoing either spelling gives the bytes the token adds to the text, which is what both sides can agree on.
"""

import re
from dataclasses import dataclass

_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_SENTENCEPIECE_SPACE = "\u2581"


def _byte_level_alphabet() -> dict[str, int]:
    """Stand-in character -> byte, the table byte-level BPE uses to spell any byte with a printable character."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    alphabet = {chr(byte): byte for byte in printable}
    printable_set = set(printable)
    stand_ins = (chr(256 + offset) for offset in range(256))
    for byte in range(256):
        if byte not in printable_set:
            alphabet[next(stand_ins)] = byte
    return alphabet


_BYTE_LEVEL_ALPHABET = _byte_level_alphabet()


def _is_byte_level(tokenizer) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    return decoder is not None and b'"ByteLevel"' in decoder.__getstate__()


def _byte_level_bytes(token: str) -> bytes:
    return b"".join(
        bytes([_BYTE_LEVEL_ALPHABET[char]]) if char in _BYTE_LEVEL_ALPHABET else char.encode("utf-8")
        for char in token
    )


def _sentencepiece_bytes(token: str) -> bytes:
    fallback = _BYTE_FALLBACK.fullmatch(token)
    if fallback:
        return bytes([int(fallback.group(1), 16)])
    return token.replace(_SENTENCEPIECE_SPACE, " ").encode("utf-8")


@dataclass(frozen=True)
class TokenTexts:
    """`texts[id]`: the bytes token `id` stands for (its literal content for added tokens);
    `special`: the ids of special tokens, which stand for no text."""

    texts: list[bytes]
    special: frozenset[int]


def token_texts(tokenizer) -> TokenTexts:
    """Every id below `len(tokenizer)`, added tokens included."""
    added = tokenizer.added_tokens_decoder
    spell = _byte_level_bytes if _is_byte_level(tokenizer) else _sentencepiece_bytes
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    texts = [
        added[token_id].content.encode("utf-8") if token_id in added else spell(token or "")
        for token_id, token in enumerate(tokens)
    ]
    special = frozenset(token_id for token_id, token in added.items() if token.special)
    return TokenTexts(texts, special | frozenset(tokenizer.all_special_ids))
