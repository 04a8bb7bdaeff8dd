"""Images in chat messages: checked, cleaned, sized for a model, and carried as OpenAI content parts.

A message that holds images has OpenAI's list content (``[{"type": "text", "text"}, {"type":
"image_url", "image_url": {"url": "data:image/png;base64,..."}}]``, see
https://platform.openai.com/docs/guides/images-vision) everywhere in the pipeline; a plain message
keeps its string content. Every image that enters Parley (an upload, a data URL, a fetched URL) goes
through :func:`image_clean` first: its type is read from its bytes (PNG, JPEG, WebP or GIF; the name
and the declared type are not trusted), its size and pixel count are capped (a decompression bomb is
refused from its header, before it is decoded), and it is encoded again from its pixels, which drops
EXIF (GPS position, camera serial) and every other metadata block; the EXIF orientation is applied
to the pixels first, so the image still shows the right way up. Animated images keep their first
frame, as OpenAI-compatible vision models read only that.

Before a model reads a request, :func:`messages_for_model` fits its images to that model's caps
(``image_max_pixels``: the longest side in pixels; ``image_max_bytes``), resizing with the aspect
ratio kept and only when an image is over a cap, so a model never gets a smaller image than it takes.
A model without ``supports_vision`` either refuses the request (400 ``model_not_vision_capable``,
the default) or reads ``[image omitted: ...]`` in place of each image (``text_only_images="omit"``):
an image is never dropped silently.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import ipaddress
import socket
import time
import warnings
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx
from django.conf import settings
from PIL import Image, ImageOps, UnidentifiedImageError
from rest_framework import status

from core.errors import ParleyError

from .models import ModelConfig, TextOnlyImages
from .providers import InferenceError, content_images, image_count

# Pillow's format name -> the type Parley stores and sends.
IMAGE_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}
JPEG_QUALITY = 90  # re-encoding a JPEG or WebP: visually lossless for a model, far smaller than PNG
FIT_JPEG_QUALITY = 85  # when an image must be re-encoded as JPEG to fit a model's byte cap
THUMBNAIL_SIDE = 256  # pixels, the longest side of a stored thumbnail
URL_FETCH_REDIRECTS = 3  # redirects followed when fetching an image URL, each checked like the first


class ImageInvalid(ParleyError):
    """Not an image Parley can read (truncated, corrupt, not base64, an unknown URL scheme)."""

    code = "invalid_image"


class ImageTypeUnsupported(ParleyError):
    code = "unsupported_image_type"
    status_code = status.HTTP_415_UNSUPPORTED_MEDIA_TYPE


class ImageTooLarge(ParleyError):
    """Too many bytes (``image_too_large``) or pixels (``image_too_many_pixels``: a decompression bomb)."""

    code = "image_too_large"
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE


class ImageUrlRefused(ParleyError):
    """An image URL Parley will not fetch: fetching is off, a private address, a failed download."""

    code = "image_url_refused"


class ModelNotVisionCapable(InferenceError):
    """Images sent to a model that cannot see them, and whose ``text_only_images`` is ``refuse``."""

    code = "model_not_vision_capable"
    status_code = status.HTTP_400_BAD_REQUEST
    upstream_status = 400  # the request is wrong for this model: routing does not hand it on


class ModelImageError(InferenceError):
    """An image a model cannot be sent (over its caps even re-encoded); the code is the image error's."""

    upstream_status = 400  # the request is wrong for this model: routing does not hand it on


@dataclass(frozen=True)
class CleanImage:
    """An image as Parley stores it: ``data`` re-encoded without metadata, its type, size (px) and SHA-256."""

    data: bytes
    content_type: str
    width: int
    height: int

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def extension(self) -> str:
        return {"image/jpeg": ".jpg"}.get(self.content_type, "." + self.content_type.split("/")[1])


def _size(n: int) -> str:
    return f"{n / 1048576:.1f} MiB" if n >= 1048576 else f"{n:,} bytes"


def _open(data: bytes) -> Image.Image:
    """Open ``data`` (its header only) as an image of an allowed type; raise the errors of :func:`image_clean`."""
    limit = settings.IMAGE_MAX_PIXELS
    try:
        with warnings.catch_warnings():
            # Pillow warns past Image.MAX_IMAGE_PIXELS and raises past twice that; both are bombs here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(
            f"The image has too many pixels (a decompression bomb?): {exc}", code="image_too_many_pixels"
        ) from exc
    except UnidentifiedImageError as exc:
        raise ImageTypeUnsupported("The file is not an image of a supported type (PNG, JPEG, WebP or GIF).") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageInvalid(f"The image cannot be read: {exc}") from exc
    if image.format not in IMAGE_TYPES:
        raise ImageTypeUnsupported(f"{image.format} images are not supported; send PNG, JPEG, WebP or GIF.")
    width, height = image.size
    if width * height > limit:
        raise ImageTooLarge(
            f"The image is {width} x {height} pixels; the limit is {limit:,} pixels (IMAGE_MAX_PIXELS).",
            code="image_too_many_pixels",
        )
    return image


def _encode(image: Image.Image, content_type: str, *, quality: int = JPEG_QUALITY) -> bytes:
    """Return ``image``'s pixels encoded as ``content_type``, with no metadata."""
    out = io.BytesIO()
    if content_type == "image/jpeg":
        if image.mode not in ("RGB", "L"):
            if image.mode in ("RGBA", "LA", "P", "PA"):
                image = image.convert("RGBA")
                flat = Image.new("RGB", image.size, (255, 255, 255))
                flat.paste(image, mask=image.getchannel("A"))
                image = flat
            else:
                image = image.convert("RGB")
        image.save(out, format="JPEG", quality=quality, optimize=True)
    elif content_type == "image/webp":
        if image.mode not in ("RGB", "RGBA"):
            image = image.convert("RGBA" if "A" in image.mode or image.mode == "P" else "RGB")
        image.save(out, format="WEBP", quality=quality)
    elif content_type == "image/gif":
        image.save(out, format="GIF")
    else:
        if image.mode not in ("1", "L", "LA", "P", "RGB", "RGBA", "I;16"):
            image = image.convert("RGBA")
        image.save(out, format="PNG")
    return out.getvalue()


def image_clean(*, data: bytes) -> CleanImage:
    """Return ``data`` as a :class:`CleanImage`: type sniffed from its bytes, metadata (EXIF) stripped.

    Raise :class:`ImageTooLarge` (413) ``image_too_large`` over ``IMAGE_MAX_BYTES`` bytes or
    ``image_too_many_pixels`` over ``IMAGE_MAX_PIXELS`` pixels (width x height, read from the header
    before decoding, so a decompression bomb costs nothing); :class:`ImageTypeUnsupported` (415) for
    anything but PNG, JPEG, WebP and GIF; :class:`ImageInvalid` (400) for a file that cannot be decoded.
    """
    if len(data) > settings.IMAGE_MAX_BYTES:
        raise ImageTooLarge(
            f"The image is {_size(len(data))}; the limit is {_size(settings.IMAGE_MAX_BYTES)} (IMAGE_MAX_BYTES)."
        )
    if not data:
        raise ImageInvalid("The image is empty.")
    image = _open(data)
    content_type = IMAGE_TYPES[image.format]
    try:
        image.seek(0)  # the first frame of an animation
        image.load()
        upright = ImageOps.exif_transpose(image)  # a new image: EXIF and info are not carried over
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageInvalid(f"The image cannot be decoded: {exc}") from exc
    if upright is image:  # nothing to rotate: drop the metadata by hand
        upright = image.copy()
        upright.info = {}
    cleaned = _encode(upright, content_type)
    return CleanImage(data=cleaned, content_type=content_type, width=upright.width, height=upright.height)


def image_thumbnail(*, data: bytes) -> bytes:
    """Return a WebP thumbnail of a clean image (longest side :data:`THUMBNAIL_SIDE` px, aspect kept)."""
    image = Image.open(io.BytesIO(data))
    image.seek(0)
    image = image.convert("RGBA")
    image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.LANCZOS)
    return _encode(image, "image/webp", quality=80)


def image_fit(*, data: bytes, content_type: str, max_side: int, max_bytes: int) -> tuple[bytes, str]:
    """Return ``(data, content_type)`` within a model's caps: longest side ``max_side`` px, ``max_bytes`` bytes.

    An image within both caps is returned as it is (never shrunk for nothing). One over ``max_side``
    is resized to it with the aspect ratio kept (Lanczos). One still over ``max_bytes`` is
    re-encoded as JPEG (quality :data:`FIT_JPEG_QUALITY`, transparency on white). Raise
    :class:`ImageTooLarge` (413) when even that is over ``max_bytes``.
    """
    image = _open(data)
    if max(image.size) <= max_side and len(data) <= max_bytes:
        return data, content_type
    image.seek(0)
    image.load()
    if max(image.size) > max_side:
        scale = max_side / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
        data = _encode(image, content_type)
    if len(data) > max_bytes:
        content_type = "image/jpeg"
        data = _encode(image, content_type, quality=FIT_JPEG_QUALITY)
    if len(data) > max_bytes:
        raise ImageTooLarge(
            f"An image is {_size(len(data))} even at {image.width} x {image.height} as JPEG; this model "
            f"takes images of {_size(max_bytes)} at most."
        )
    return data, content_type


def data_url(*, data: bytes, content_type: str) -> str:
    """Return ``data`` as a ``data:<type>;base64,...`` URL."""
    return f"data:{content_type};base64,{base64.b64encode(data).decode('ascii')}"


def data_url_decode(url: str) -> bytes:
    """Return the bytes of a base64 ``data:`` URL (the declared type is ignored: the bytes say it).

    Raise :class:`ImageInvalid` for anything else, and :class:`ImageTooLarge` when the encoded text
    alone is over ``IMAGE_MAX_BYTES`` (checked before decoding).
    """
    head, comma, payload = url.partition(",")
    if not (url.startswith("data:") and comma and head.endswith(";base64")):
        raise ImageInvalid("An image must be a base64 data URL: data:image/png;base64,...")
    if len(payload) * 3 // 4 > settings.IMAGE_MAX_BYTES + 3:
        raise ImageTooLarge(f"The image is over the limit of {_size(settings.IMAGE_MAX_BYTES)} (IMAGE_MAX_BYTES).")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageInvalid("The image's data URL is not valid base64.") from exc


def image_part(*, data: bytes, content_type: str) -> dict:
    """Return an OpenAI ``image_url`` content part holding ``data`` as a data URL."""
    return {"type": "image_url", "image_url": {"url": data_url(data=data, content_type=content_type)}}


def accepts_images(config: ModelConfig) -> bool:
    """Return whether a request with images may go to ``config``: it sees them, or omits them with a note."""
    return config.supports_vision or config.text_only_images == TextOnlyImages.OMIT


def vision_check(*, config: ModelConfig, images: int) -> None:
    """Raise :class:`ModelNotVisionCapable` (400) when ``images`` > 0 and ``config`` refuses images.

    Called before any work (nothing stored, nothing admitted) by every path that sends images.
    """
    if images and not accepts_images(config):
        raise ModelNotVisionCapable(
            f"The model {config.display_name} ({config.slug}) cannot read images. Choose a model that "
            "supports vision, or send text only."
        )


def omitted_note(config: ModelConfig) -> str:
    return f"[image omitted: the model {config.slug} cannot see images]"


def messages_for_model(*, config: ModelConfig, messages: list[dict]) -> list[dict]:
    """Return ``messages`` as ``config`` reads them: images fitted to its caps, or omitted, or refused.

    A vision model gets each image within ``image_max_pixels`` (longest side) and ``image_max_bytes``
    (see :func:`image_fit`); a text-only model with ``text_only_images="omit"`` gets string content
    with ``[image omitted: ...]`` where each image was. Messages without images are returned as they
    are. Raise :class:`ModelNotVisionCapable` (the model refuses images) and :class:`ModelImageError`
    (an image over the model's caps even as JPEG), both :class:`~inference.providers.InferenceError`.
    Blocking (decodes and may resize images): call off the event loop.
    """
    if not image_count(messages):
        return messages
    vision_check(config=config, images=1)
    result = []
    for message in messages:
        content = message.get("content")
        if not content_images(content):
            result.append(message)
            continue
        if not config.supports_vision:
            parts = [part.get("text") or "" if part.get("type") == "text" else omitted_note(config) for part in content]
            result.append({**message, "content": "\n".join(p for p in parts if p)})
            continue
        fitted = []
        for part in content:
            if part.get("type") == "image_url":
                try:
                    data = data_url_decode(part["image_url"]["url"])
                    data, content_type = image_fit(
                        data=data,
                        content_type=IMAGE_TYPES[_open(data).format],
                        max_side=config.image_max_pixels,
                        max_bytes=config.image_max_bytes,
                    )
                except (ImageTooLarge, ImageInvalid, ImageTypeUnsupported) as exc:
                    raise ModelImageError(exc.detail, code=exc.code, status_code=exc.status_code) from exc
                part = image_part(data=data, content_type=content_type)
            fitted.append(part)
        result.append({**message, "content": fitted})
    return result


# --- Image URLs (/v1) -------------------------------------------------------------------------


def _address_allowed(address: str) -> bool:
    """Return whether ``address`` may be fetched: a public (global) one, or in ``IMAGE_URL_FETCH_ALLOWED_NETWORKS``."""
    ip = ipaddress.ip_address(address)
    if getattr(ip, "ipv4_mapped", None):
        ip = ip.ipv4_mapped
    if any(ip in ipaddress.ip_network(network) for network in settings.IMAGE_URL_FETCH_ALLOWED_NETWORKS):
        return True
    return ip.is_global and not ip.is_multicast


def _resolve(host: str, port: int) -> str:
    """Return the address to connect to for ``host``: raise :class:`ImageUrlRefused` unless every address
    it resolves to may be fetched (a name with one private address among public ones is refused too)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ImageUrlRefused(f"The image URL's host {host!r} cannot be resolved.") from exc
    addresses = [info[4][0] for info in infos]
    refused = [a for a in addresses if not _address_allowed(a)]
    if not addresses or refused:
        raise ImageUrlRefused(
            f"The image URL's host {host!r} is a private, loopback or reserved address; Parley fetches only "
            "public addresses."
        )
    return addresses[0]


def image_fetch(url: str) -> bytes:
    """Download the image at an http(s) ``url`` for ``/v1`` (``IMAGE_URL_FETCH`` must be on); return its bytes.

    The host is resolved first and every address checked (public only, or within
    ``IMAGE_URL_FETCH_ALLOWED_NETWORKS``); the connection goes to that checked address (TLS still
    verified against the host's name), so a name that resolves differently a moment later
    (DNS rebinding) does not reach an internal one. Redirects are followed up to
    :data:`URL_FETCH_REDIRECTS` times, each checked the same way. The download stops past
    ``IMAGE_MAX_BYTES`` bytes or ``IMAGE_URL_FETCH_TIMEOUT`` seconds in all. Raise
    :class:`ImageUrlRefused` (400) or :class:`ImageTooLarge` (413).
    """
    if not settings.IMAGE_URL_FETCH:
        raise ImageUrlRefused(
            "Image URLs are not fetched on this server (IMAGE_URL_FETCH is off); send the image as a data URL."
        )
    deadline = time.monotonic() + settings.IMAGE_URL_FETCH_TIMEOUT
    limit = settings.IMAGE_MAX_BYTES
    timeout = httpx.Timeout(settings.IMAGE_URL_FETCH_TIMEOUT)
    with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
        for _ in range(URL_FETCH_REDIRECTS + 1):
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ImageUrlRefused("An image URL must be http(s) or a data URL.")
            port = parts.port or (443 if parts.scheme == "https" else 80)
            address = _resolve(parts.hostname, port)
            host = f"[{address}]" if ":" in address else address
            pinned = urlunsplit((parts.scheme, f"{host}:{port}", parts.path or "/", parts.query, ""))
            headers = {"Host": parts.netloc.rpartition("@")[2], "Accept": "image/*"}
            extensions = {"sni_hostname": parts.hostname} if parts.scheme == "https" else {}
            try:
                with client.stream("GET", pinned, headers=headers, extensions=extensions) as response:
                    if response.is_redirect:
                        url = str(httpx.URL(url).join(response.headers.get("location", "")))
                        continue
                    if response.status_code != 200:
                        raise ImageUrlRefused(f"The image URL answered HTTP {response.status_code}.")
                    declared = int(response.headers.get("content-length") or 0)
                    if declared > limit:
                        raise ImageTooLarge(f"The image at the URL is {_size(declared)}; the limit is {_size(limit)}.")
                    body = bytearray()
                    for chunk in response.iter_bytes():
                        body += chunk
                        if len(body) > limit:
                            raise ImageTooLarge(f"The image at the URL is over the limit of {_size(limit)}.")
                        if time.monotonic() > deadline:
                            raise ImageUrlRefused(
                                f"The image URL took longer than {settings.IMAGE_URL_FETCH_TIMEOUT:g} s to download."
                            )
                    return bytes(body)
            except httpx.HTTPError as exc:
                raise ImageUrlRefused(f"The image URL could not be fetched: {type(exc).__name__}.") from exc
    raise ImageUrlRefused(f"The image URL redirected more than {URL_FETCH_REDIRECTS} times.")


def image_from_url(url: str) -> CleanImage:
    """Return the clean image of an ``image_url`` part's URL: a base64 data URL, or (when allowed) http(s).

    Raise as :func:`data_url_decode`, :func:`image_fetch` and :func:`image_clean` do.
    """
    if url.startswith("data:"):
        return image_clean(data=data_url_decode(url))
    if url.startswith(("http://", "https://")):
        return image_clean(data=image_fetch(url))
    raise ImageInvalid("An image URL must be a base64 data URL or an http(s) URL.")
