"""Turning an uploaded byte stream into lines of text, whatever its encoding and line ends.

The encoding is decided from a sample at the start of the file: a UTF-8 BOM, or text that decodes as UTF-8
(a few broken sequences are tolerated: real exports truncate emoji), means UTF-8; anything else goes to
charset-normalizer, which recognises UTF-16 and UTF-32 and picks the legacy code page whose text reads best
(Cyrillic, Greek, Japanese...). Western text reads equally well in several Latin code pages; then
Windows-1252, the superset of Latin-1 that spreadsheet programs write, is chosen. Two surprises later in the
file are handled without starting over:
- an invalid UTF-8 byte after nothing but ASCII means the guess was wrong; ASCII reads the same in both
  encodings, so decoding switches to Windows-1252 from there and the text read so far stays correct;
- invalid bytes in a file that is otherwise UTF-8 are replaced with U+FFFD and each affected line is noted.
An encoding the uploader names is applied strictly: a byte it cannot decode is an error naming the line.
"""

from __future__ import annotations

import codecs
import io
import re
from collections.abc import Iterator
from typing import Any, BinaryIO

import charset_normalizer

from services.dataset.importing.errors import ImportFileError

SAMPLE_BYTES = 64 * 1024
CHUNK_BYTES = 1024 * 1024
MAX_NOTES = 100
# How much more chaotic (charset-normalizer's measure) Windows-1252 may read than the library's pick of
# another script and still be chosen.
WESTERN_MARGIN = 0.1
# Fewer non-ASCII bytes than this are too little to tell code pages apart: Windows-1252 is assumed.
MIN_EVIDENCE_BYTES = 16

UTF8 = "utf-8"
UTF8_BOM = "utf-8-sig"
CP1252 = "cp1252"

# Windows-1252 leaves five bytes undefined; Windows itself maps them to the C1 controls of the same value,
# as Latin-1 does. With that table no byte sequence fails to decode.
_CP1252_TABLE = "".join(
    chr(byte) if ch == "\ufffe" else ch
    for byte, ch in enumerate(bytes(range(256)).decode(CP1252, errors="replace").replace("\ufffd", "\ufffe"))
)
_UNDECODED = re.compile("[\udc80-\udcff]+")
# Unicode blocks (as charset-normalizer names them) that every script uses.
_SCRIPT_NEUTRAL = frozenset(
    {"Control character", "General Punctuation", "Currency Symbols", "Letterlike Symbols"}
)


def detect_encoding(sample: bytes) -> str:
    if sample.startswith(codecs.BOM_UTF8):
        return UTF8_BOM
    broken, non_ascii = _utf8_damage(sample)
    # Kept by hand: charset-normalizer guesses on short or damaged samples (four ASCII bytes can read as
    # UTF-16, and UTF-8 whose exports truncated an emoji as some legacy code page, garbling every character).
    # Text that decodes as UTF-8, or nearly (a few broken sequences among many good ones), is UTF-8; NUL
    # bytes are left to the library, which recognises UTF-16 and UTF-32 by them.
    if b"\x00" not in sample and (broken == 0 or non_ascii >= 4 * broken):
        return UTF8
    # The library may read a few bytes without NULs as UTF-16: only a BOM or NULs say UTF-16 or UTF-32.
    candidates = [
        match
        for match in charset_normalizer.from_bytes(sample)
        if match.bom or b"\x00" in sample or not match.encoding.startswith(("utf_16", "utf_32"))
    ]
    if not candidates:
        return CP1252  # every byte decodes in it; the NUL check then refuses binary files
    best = candidates[0]
    encoding = codecs.lookup(best.encoding).name
    if encoding in ("ascii", UTF8) or encoding.startswith(("utf-16", "utf-32")):
        return UTF8 if encoding == "ascii" else encoding
    # Latin-script code pages cannot be told apart on ordinary text (the library reads French as Baltic):
    # Western spreadsheets write Windows-1252. Another script (Cyrillic, Greek, CJK...) is believed when
    # there is enough of it and Windows-1252 reads clearly worse; short Western text can pass for Big5.
    if all("Latin" in alphabet or alphabet in _SCRIPT_NEUTRAL for alphabet in best.alphabets):
        return CP1252
    if sum(byte > 127 for byte in sample) < MIN_EVIDENCE_BYTES:
        return CP1252
    western = charset_normalizer.from_bytes(sample, cp_isolation=[CP1252], threshold=1.0).best()
    if western is not None and western.chaos <= best.chaos + WESTERN_MARGIN:
        return CP1252
    return encoding


def _utf8_damage(sample: bytes) -> tuple[int, int]:
    """(broken sequences, well-formed non-ASCII characters) when the sample is read as UTF-8."""
    decoder = codecs.getincrementaldecoder(UTF8)(errors="replace")
    # final=False: a character cut by the sample's end is not an error.
    text = decoder.decode(sample, final=False)
    broken = text.count("\ufffd")
    return broken, sum(1 for ch in text if ord(ch) > 127) - broken


def normalise_encoding_name(name: str, *, file_name: str) -> str:
    try:
        canonical = codecs.lookup(name).name
    except LookupError:
        raise ImportFileError(f"unknown encoding {name!r}", file_name=file_name, code="bad_option") from None
    return {"windows-1252": CP1252, "iso8859-1": CP1252, "latin-1": CP1252}.get(canonical, canonical)


class DecodedLines:
    """Iterates the text lines of a byte stream, line ends kept (what `csv.reader` wants).

    Lines end at \\n, \\r\\n or a lone \\r. `encoding` says what was used (it can change from UTF-8 to cp1252
    once, see the module docstring); `notes` lists lines whose text had to be repaired.
    """

    def __init__(self, raw: BinaryIO, *, file_name: str, encoding: str | None = None) -> None:
        self.file_name = file_name
        self._raw = raw
        self._sample = raw.read(SAMPLE_BYTES)
        self.explicit = encoding is not None
        self.encoding = (
            normalise_encoding_name(encoding, file_name=file_name)
            if encoding
            else detect_encoding(self._sample)
        )
        if self.encoding == UTF8 and self._sample.startswith(codecs.BOM_UTF8):
            self.encoding = UTF8_BOM
        self.notes: list[str] = []
        self.repaired_lines = 0
        self.lines_read = 0
        self._ascii_so_far = True
        self._decoder = self._make_decoder(self.encoding)
        if not self.encoding.startswith(("utf-16", "utf-32")) and b"\x00" in self._sample:
            offset = self._sample.index(b"\x00")
            raise ImportFileError(
                f"this is not a text file (byte {offset} is NUL); upload CSV, TSV, XLSX or JSONL",
                file_name=file_name,
                line=self._sample[:offset].count(b"\n") + 1,
                code="not_text",
            )

    @property
    def sample(self) -> bytes:
        return self._sample

    def sample_text(self) -> str:
        """The decoded sample, cut after its last complete line."""
        text = self._make_decoder(self.encoding, errors="replace").decode(self._sample, final=False)
        if len(self._sample) < SAMPLE_BYTES:
            return text
        cut = max(text.rfind("\n"), text.rfind("\r"))
        return text[: cut + 1] if cut >= 0 else text

    def _make_decoder(self, encoding: str, errors: str = "strict") -> codecs.IncrementalDecoder:
        if encoding == CP1252:
            return _Cp1252Decoder()
        return codecs.getincrementaldecoder(encoding)(errors=errors)

    def __iter__(self) -> Iterator[str]:
        carry = ""
        chunk = self._sample
        final = False
        while not final:
            following = self._raw.read(CHUNK_BYTES)
            final = not following
            text = self._decode(chunk, final=final)
            if "\x00" in text:
                # PostgreSQL cannot store NUL in text; nothing else is altered.
                text = self._repair(carry + text, "\x00", "a NUL character was replaced with U+FFFD")
                carry = ""
            lines = io.StringIO(carry + text, newline="").readlines()
            # The last line may continue in the next chunk (or be a \r whose \n comes next): hold it back.
            carry = "" if final or not lines else lines.pop()
            self.lines_read += len(lines)
            yield from lines
            chunk = following
        if carry:
            self.lines_read += 1
            yield carry

    def _decode(self, chunk: bytes, *, final: bool) -> str:
        state = self._decoder.getstate()
        try:
            text = self._decoder.decode(chunk, final)
        except UnicodeDecodeError as exc:
            return self._decode_failed(chunk, final=final, state=state, exc=exc)
        if self._ascii_so_far and not text.isascii():
            self._ascii_so_far = False
        return text

    def _decode_failed(
        self, chunk: bytes, *, final: bool, state: tuple[bytes, int], exc: UnicodeDecodeError
    ) -> str:
        pending = state[0] + chunk
        guessed_utf8 = self.encoding in (UTF8, UTF8_BOM) and not self.explicit
        if guessed_utf8 and self._ascii_so_far and pending[: exc.start].isascii():
            self.encoding = CP1252
            self._decoder = _Cp1252Decoder()
            self.notes.append("the file is not valid UTF-8: it is read as Windows-1252 (Latin-1)")
            return self._decoder.decode(pending, final)
        self._ascii_so_far = False
        # Decode again keeping undecodable bytes as lone surrogates, which shows the lines they are on.
        self._decoder.setstate(state)
        self._decoder.errors = "surrogateescape"  # type: ignore[attr-defined]
        try:
            text = self._decoder.decode(chunk, final)
        except UnicodeDecodeError:
            # Only ASCII-compatible encodings can escape bytes (UTF-16 cannot): repair without line numbers.
            self._decoder.setstate(state)
            self._decoder.errors = "replace"  # type: ignore[attr-defined]
            text = self._decoder.decode(chunk, final)
            if self.explicit:
                raise ImportFileError(
                    f"the file is not valid {self.encoding}; check the file's encoding",
                    file_name=self.file_name,
                    code="bad_encoding",
                ) from None
            self.notes.append(
                f"after line {self.lines_read}: bytes that are not valid {self.encoding} were replaced"
            )
            return text
        finally:
            self._decoder.errors = "strict"  # type: ignore[attr-defined]
        if self.explicit:
            first = _UNDECODED.search(text)
            assert first is not None
            byte = ord(first.group()[0]) - 0xDC00
            raise ImportFileError(
                f"byte 0x{byte:02x} is not valid {self.encoding}; check the file's encoding",
                file_name=self.file_name,
                line=self.lines_read + text.count("\n", 0, first.start()) + 1,
                code="bad_encoding",
            )
        message = f"bytes that are not valid {self.encoding} were replaced with U+FFFD"
        return _UNDECODED.sub("\ufffd", self._note_lines(text, _UNDECODED, message))

    def _repair(self, text: str, bad: str, message: str) -> str:
        return self._note_lines(text, re.compile(re.escape(bad)), message).replace(bad, "\ufffd")

    def _note_lines(self, text: str, pattern: re.Pattern[str], message: str) -> str:
        # Line numbers here count \n only; lone \r line ends are rare in files that also need repairs.
        line = self.lines_read + 1
        position = 0
        last_noted = 0
        for match in pattern.finditer(text):
            line += text.count("\n", position, match.start())
            position = match.start()
            if line == last_noted:
                continue
            last_noted = line
            self.repaired_lines += 1
            if len(self.notes) < MAX_NOTES:
                self.notes.append(f"line {line}: {message}")
        return text


class _Cp1252Decoder(codecs.IncrementalDecoder):
    def decode(self, input: Any, final: bool = False) -> str:  # noqa: A002 - the codecs signature
        return codecs.charmap_decode(input, "strict", _CP1252_TABLE)[0]
