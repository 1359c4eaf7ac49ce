"""Extract the http(s) links of a message (like Mailsac's "parsed links").

Pure standard library: the MIME structure is parsed with the ``email``
package, HTML with ``html.parser`` (attributes only, never regex), plain text
with a URL regex.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from email import policy as _policy
from email.message import MIMEPart
from email.parser import BytesParser
from html.parser import HTMLParser
from typing import cast

__all__ = ["extract_links"]

_PARSER = BytesParser(policy=_policy.default)
_URL = re.compile(r"""https?://[^\s<>"'`]+""", re.IGNORECASE)
_TRAILING = ".,;:!?'\"*"
_PAIRS = {")": "(", "]": "[", "}": "{"}
_URL_ATTRS = frozenset({"href", "src"})


def _is_http(url: str) -> bool:
    scheme, sep, rest = url.partition("://")
    return bool(sep) and scheme.lower() in ("http", "https") and bool(rest)


def _clean_text_url(url: str) -> str:
    """Strip trailing punctuation, keeping balanced closing brackets (e.g. wiki URLs)."""
    while url:
        last = url[-1]
        if last in _TRAILING or last in _PAIRS and url.count(_PAIRS[last]) < url.count(last):
            url = url[:-1]
        else:
            break
    return url


def _text_urls(text: str) -> list[str]:
    out = []
    for m in _URL.finditer(text):
        url = _clean_text_url(m.group())
        if _is_http(url):
            out.append(url)
    return out


class _LinkParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []
        self._skip = 0  # inside <script>/<style>

    def _collect(self, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in _URL_ATTRS and value:
                url = value.strip()
                if _is_http(url):  # drops mailto:, cid:, javascript:, data:, relative
                    self.links.append(url)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        self._collect(attrs)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._collect(attrs)  # <x/> opens nothing

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.links.extend(_text_urls(data))


def _part_text(part: MIMEPart) -> str:
    try:
        content = part.get_content()
        if isinstance(content, str):
            return content
    except (LookupError, ValueError, AssertionError):
        pass  # unknown charset or broken transfer encoding: decode leniently
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        payload = b""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, "replace")
    except LookupError:
        return payload.decode("utf-8", "replace")


def _walk(part: MIMEPart) -> Iterator[MIMEPart]:
    if part.is_multipart():
        for sub in part.iter_parts():
            yield from _walk(sub)
    elif not part.is_attachment():
        yield part


def extract_links(message: bytes) -> list[str]:
    """http(s) URLs found in the text/plain and text/html parts, deduplicated, first seen first."""
    msg = cast(MIMEPart, _PARSER.parsebytes(message))  # policy.default builds EmailMessage
    links: list[str] = []
    for part in _walk(msg):
        ctype = part.get_content_type()
        if ctype == "text/html":
            parser = _LinkParser()
            parser.feed(_part_text(part))
            parser.close()
            links.extend(parser.links)
        elif ctype == "text/plain":
            links.extend(_text_urls(_part_text(part)))
    return list(dict.fromkeys(links))
