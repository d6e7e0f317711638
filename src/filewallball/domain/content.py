"""Content types: what sniffed bytes are, which are text or images, which may be stored."""

from __future__ import annotations

import re
from dataclasses import dataclass

from filewallball.domain.errors import TypeNotAllowed

_MEDIA_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*$")
_MEDIA_PATTERN = re.compile(r"^([a-z0-9][a-z0-9!#$&^_.+-]*/(\*|[a-z0-9][a-z0-9!#$&^_.+-]*)|\*/\*)$")


# Media types that are text whatever their top-level type says.
_TEXT_APPLICATION_TYPES = frozenset(
    {
        "application/json",
        "application/xml",
        "application/javascript",
        "application/ecmascript",
        "application/x-javascript",
        "application/x-sh",
        "application/x-shellscript",
        "application/sql",
        "application/toml",
        "application/yaml",
        "application/x-yaml",
        "application/csv",
        "application/x-ndjson",
        "application/ndjson",
    }
)


_RASTER_IMAGES = frozenset(
    {
        "image/jpeg",
        "image/png",
        "image/gif",
        "image/webp",
        "image/avif",
        "image/tiff",
    }
)
# Text whatever a sniffer calls it: source code, configuration, data and logs.
TEXT_EXTENSIONS = frozenset(
    [
        "txt",
        "text",
        "md",
        "markdown",
        "rst",
        "csv",
        "tsv",
        "json",
        "jsonl",
        "ndjson",
        "xml",
        "yaml",
        "yml",
        "toml",
        "ini",
        "cfg",
        "conf",
        "env",
        "log",
        "py",
        "pyi",
        "js",
        "mjs",
        "cjs",
        "ts",
        "tsx",
        "jsx",
        "java",
        "kt",
        "go",
        "rs",
        "c",
        "h",
        "cc",
        "cpp",
        "hpp",
        "cs",
        "rb",
        "php",
        "pl",
        "sh",
        "bash",
        "zsh",
        "fish",
        "ps1",
        "sql",
        "html",
        "htm",
        "css",
        "scss",
        "less",
        "svg",
        "tex",
        "bib",
        "r",
        "m",
        "swift",
        "scala",
        "lua",
        "dart",
        "vue",
        "properties",
        "gradle",
        "dockerfile",
        "makefile",
        "diff",
        "patch",
        "srt",
        "vtt",
    ]
)


class ContentType(str):
    """A lowercase `type/subtype` media type, without parameters."""

    __slots__ = ()

    OCTET_STREAM: ContentType

    def __new__(cls, value: str) -> ContentType:
        normalised = value.split(";", 1)[0].strip().lower()
        if not _MEDIA_TYPE.fullmatch(normalised):
            raise ValueError(f"not a media type: {value!r}")
        return super().__new__(cls, normalised)

    @property
    def is_text(self) -> bool:
        """Whether a text preview makes sense for this type."""
        return (
            self.startswith("text/")
            or self in _TEXT_APPLICATION_TYPES
            or self.endswith(("+json", "+xml", "+yaml"))
        )

    @property
    def is_image(self) -> bool:
        return self.startswith("image/")

    @property
    def is_thumbnailable(self) -> bool:
        """Raster images libvips renders; SVG (a document that can carry script) is not one."""
        return self in _RASTER_IMAGES

    @property
    def is_binary_media(self) -> bool:
        return self.startswith(("image/", "audio/", "video/", "font/")) and self != "image/svg+xml"

    def matches(self, pattern: str) -> bool:
        """Whether this type matches `pattern`: exact, `type/*` or `*/*`."""
        pattern = pattern.strip().lower()
        if pattern == "*/*":
            return True
        if pattern.endswith("/*"):
            return self.startswith(pattern[:-1])
        return self == pattern


ContentType.OCTET_STREAM = ContentType("application/octet-stream")


def validate_type_pattern(pattern: str) -> str:
    """`pattern` normalised, or ValueError when it is not `type/subtype`, `type/*` or `*/*`."""
    normalised = pattern.strip().lower()
    if not _MEDIA_PATTERN.fullmatch(normalised):
        raise ValueError(f"not a media type pattern: {pattern!r}")
    return normalised


@dataclass(frozen=True, slots=True)
class TypePolicy:
    """Which sniffed content types may be stored: denied wins, then the allow list if any."""

    allowed: tuple[str, ...] = ()
    denied: tuple[str, ...] = ()

    def check(self, content_type: ContentType) -> None:
        if any(content_type.matches(pattern) for pattern in self.denied):
            raise TypeNotAllowed(f"files of type {content_type} are not accepted")
        if self.allowed and not any(content_type.matches(p) for p in self.allowed):
            raise TypeNotAllowed(f"files of type {content_type} are not accepted")
