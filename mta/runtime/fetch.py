"""Remote attachments of the sending API: fetched only from allowed hosts.

One job: get the bytes of an attachment given by URL (`attachments[i].path`)
whose host the operator put in `[api] attachment_hosts` (mta.api.emails
refuses every other host before we get here), and put them into the email.

API:
    await fetch_remote(req, *, limit, timeout=10.0, ssl_context=None) -> EmailRequest
        `req` with each remote attachment's content filled in; ApiError 422
        (`invalid_attachment`, naming attachments[i].path) when a fetch fails

Rules: GET only; redirects are not followed (a redirect could leave the
allowed host); 200 only; at most `limit` bytes over all of the email's
attachments (counted while reading, so a lying Content-Length cannot make
us read more); `timeout` seconds per fetch; certificates verified for
https (the system's trust store, or `ssl_context`). The content type, when
the email did not give one, is the response's.
"""

from __future__ import annotations

import dataclasses
import re
import ssl

import aiohttp

from mta.api.emails import EmailRequest
from mta.api.http import ApiError

__all__ = ["fetch_remote"]

_MEDIA = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,63}")


async def _get(session: aiohttp.ClientSession, url: str, field: str, room: int,
               ssl_context: ssl.SSLContext | None) -> tuple[bytes, str]:
    try:
        async with session.get(url, allow_redirects=False,
                               ssl=ssl_context if ssl_context is not None else True) as r:
            if r.status != 200:
                raise ApiError(422, "invalid_attachment",
                               f"{field}: the server answered {r.status}, not 200")
            chunks, size = [], 0
            async for chunk in r.content.iter_chunked(65536):
                size += len(chunk)
                if size > room:
                    raise ApiError(422, "invalid_attachment",
                                   f"{field}: larger than the attachment limit")
                chunks.append(chunk)
            ctype = (r.content_type or "").lower()
            # only a plain media type: a multipart/* or message/* part, or a
            # malformed one, is left to the file name's guess
            if not _MEDIA.fullmatch(ctype) or ctype.startswith(("multipart/", "message/")):
                ctype = ""
            return b"".join(chunks), ctype
    except (aiohttp.ClientError, TimeoutError, ssl.SSLError, ValueError) as exc:
        raise ApiError(422, "invalid_attachment",
                       f"{field}: cannot fetch it ({type(exc).__name__})") from None


async def fetch_remote(req: EmailRequest, *, limit: int, timeout: float = 10.0,
                       ssl_context: ssl.SSLContext | None = None) -> EmailRequest:
    if not req.remote_attachments:
        return req
    c = req.composition
    attachments = list(c.attachments)
    room = limit - sum(len(a.content) for a in attachments)
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(timeout=client_timeout) as session:
        for index, url in req.remote_attachments:
            data, ctype = await _get(session, url, f"attachments[{index}].path", room,
                                     ssl_context)
            room -= len(data)
            a = attachments[index]
            attachments[index] = dataclasses.replace(
                a, content=data, content_type=a.content_type or ctype)
    return dataclasses.replace(
        req, composition=dataclasses.replace(c, attachments=tuple(attachments)),
        remote_attachments=())
