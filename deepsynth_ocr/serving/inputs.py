"""What a request may carry, checked before it reaches the queue: OpenAI chat requests, uploads, images.

Every problem is an ``ApiError`` with an HTTP status, a machine-readable ``code`` and a message that
names the field and what to send instead; the app turns it into OpenAI's error body. Images go
through the data module's own checks (``data.images.load_image``: decodable, not truncated, within
``data.max_image_pixels`` and the side bounds), so the server refuses exactly what ``prepare`` would.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from PIL import Image

from deepsynth_ocr.config import DataConfig, ServeConfig
from deepsynth_ocr.data.images import load_image, render_pdf_page
from deepsynth_ocr.errors import RowError

# Request fields of OpenAI's chat schema the server cannot honour, with the values that mean "off".
# Sampling is refused rather than ignored: a client asking for it would silently get greedy text.
UNSUPPORTED = {
    "stream": (None, False),
    "n": (None, 1),
    "temperature": (None, 0, 0.0),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "response_format": (None, {"type": "text"}),
    "best_of": (None, 1),
}
PDF_MAGIC = b"%PDF"


class ApiError(Exception):
    """A request the server refuses: ``status`` (4xx), OpenAI-style ``code`` and ``param``, a message."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.param, self.headers = status, code, message, param, headers or {}

    def body(self) -> dict:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


@dataclass
class OcrRequest:
    """One validated request: the model to read with, its images (PDF pages), prompt and token bound."""

    model: str
    images: list[Image.Image]
    prompt: str
    max_tokens: int
    pages: list[int | None]  # 1-based PDF page per image; None for a plain image


# Status per rejection reason of ``load_image``: a bomb or an oversized image is "too large" (413).
_IMAGE_STATUS = {"decompression_bomb": 413, "image_too_large": 413}


def _image_format(data: bytes) -> str | None:
    """The image format whose signature ``data`` starts with (Pillow's own checks), if any."""
    Image.init()
    return next((name for name, (_, accept) in Image.OPEN.items() if accept and accept(data[:64])), None)


def decode_image(data: bytes, data_cfg: DataConfig, what: str) -> Image.Image:
    """``data`` as a checked RGB image; an ``ApiError`` naming ``what`` when it is not one."""
    try:
        return load_image(data, data_cfg)
    except RowError as e:
        if e.reason == "undecodable_image" and not _image_format(data):  # not a broken image: no image at all
            raise ApiError(415, "unsupported_media_type", f"{what}: not an image format the server reads "
                           "(send PNG, JPEG, WebP, TIFF, BMP or GIF; PDFs to POST /v1/ocr)", param=what) from None
        raise ApiError(_IMAGE_STATUS.get(e.reason, 400), e.reason, f"{what}: {e.detail}", param=what) from None


def pdf_pages(data: bytes, serve_cfg: ServeConfig, data_cfg: DataConfig, dpi: int, what: str) -> list[Image.Image]:
    """Every page of a PDF as a checked image, at most ``serve.max_pdf_pages`` of them."""
    import pypdfium2

    try:
        pdf = pypdfium2.PdfDocument(data)
    except pypdfium2.PdfiumError as e:
        raise ApiError(400, "invalid_pdf", f"{what}: not a readable PDF ({e})", param=what) from None
    with pdf:
        n = len(pdf)
        if n == 0:
            raise ApiError(400, "invalid_pdf", f"{what}: the PDF has no pages", param=what)
        if n > serve_cfg.max_pdf_pages:
            raise ApiError(413, "too_many_pages", f"{what}: {n} pages exceeds serve.max_pdf_pages={serve_cfg.max_pdf_pages}; "
                           "split the document or send pages one by one", param=what)
        try:
            return [render_pdf_page(pdf[i], i + 1, dpi, data_cfg) for i in range(n)]
        except RowError as e:
            raise ApiError(413, e.reason, f"{what}: {e.detail}", param=what) from None


def image_from_url(url, serve_cfg: ServeConfig, data_cfg: DataConfig, param: str) -> Image.Image:
    """An ``image_url``'s image: a ``data:`` URL, or a file under ``serve.file_root`` when that is set."""
    if not isinstance(url, str) or not url:
        raise ApiError(400, "missing_image_url", f"{param} must be a non-empty string (a data:image/...;base64 URL)", param=param)
    if url.startswith("data:"):
        header, sep, payload = url[5:].partition(",")
        mime, *params = header.split(";")
        if not sep or "base64" not in params:
            raise ApiError(400, "invalid_image_url", f"{param}: expected data:<type>;base64,<data>", param=param)
        if mime and not mime.startswith("image/"):
            raise ApiError(415, "unsupported_media_type", f"{param}: type {mime!r} is not an image; "
                           "PDFs go to POST /v1/ocr as a multipart upload", param=param)
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as e:
            raise ApiError(400, "invalid_base64", f"{param}: the data is not valid base64 ({e})", param=param) from None
        return decode_image(data, data_cfg, param)
    scheme = urlparse(url).scheme
    if scheme in ("http", "https"):
        raise ApiError(400, "remote_url_refused", f"{param}: the server does not fetch URLs; send the image inline as a "
                       "data:image/...;base64 URL", param=param)
    if not serve_cfg.file_root:
        raise ApiError(403, "file_urls_disabled", f"{param}: file paths are refused by this server "
                       "(start it with serve.file_root set to allow a directory); send a data: URL", param=param)
    return decode_image(_file_under_root(url, serve_cfg.file_root, param), data_cfg, param)


def _file_under_root(url: str, root: str, param: str) -> bytes:
    path_text = unquote(urlparse(url).path) if url.startswith("file://") else url
    root_path = Path(root).resolve()
    path = (root_path / path_text).resolve()  # an absolute path_text replaces the root: checked below
    if not path.is_relative_to(root_path):
        raise ApiError(403, "file_outside_root", f"{param}: {path_text!r} is outside the allowed directory", param=param)
    if not path.is_file():
        raise ApiError(400, "file_not_found", f"{param}: no such file under the allowed directory: {path_text!r}", param=param)
    return path.read_bytes()


def check_model(model, names: list[str]) -> str:
    if not isinstance(model, str) or not model:
        raise ApiError(400, "missing_model", f"'model' must name one of {names}", param="model")
    if model not in names:
        raise ApiError(404, "model_not_found", f"model {model!r} is not served here; GET /v1/models lists {names}", param="model")
    return model


def check_max_tokens(value, default: int, limit: int, param: str = "max_tokens") -> int:
    if value is None:
        return min(default, limit)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ApiError(400, "invalid_max_tokens", f"{param} must be a positive integer, got {value!r}", param=param)
    if value > limit:
        raise ApiError(400, "max_tokens_too_large", f"{param}={value} exceeds this server's limit of {limit} "
                       "(serve.max_tokens_limit)", param=param)
    return value


def with_image_placeholder(prompt: str) -> str:
    """The model's prompt for a client's text: DeepSeek-OCR prompts start with the image placeholder."""
    return prompt if "<image>" in prompt else f"<image>\n{prompt}"


def parse_chat(payload, names: list[str], serve_cfg: ServeConfig, data_cfg: DataConfig,
               default_prompt: str, default_max_tokens: int) -> OcrRequest:
    """An OpenAI chat completion request -> ``OcrRequest``; refuses what the server does not do."""
    if not isinstance(payload, dict):
        raise ApiError(400, "invalid_request", f"the body must be a JSON object, got {type(payload).__name__}")
    model = check_model(payload.get("model"), names)
    for key, off in UNSUPPORTED.items():
        if payload.get(key) not in off:
            raise ApiError(400, "unsupported_parameter", f"{key}={payload[key]!r} is not supported: this server decodes "
                           "greedily, one choice, no streaming (leave it out)", param=key)
    if payload.get("top_p") not in (None, 1, 1.0):
        raise ApiError(400, "unsupported_parameter", "top_p is not supported: decoding is greedy (leave it out)", param="top_p")
    max_tokens = check_max_tokens(payload.get("max_completion_tokens", payload.get("max_tokens")), default_max_tokens,
                                  serve_cfg.max_tokens_limit,
                                  "max_completion_tokens" if "max_completion_tokens" in payload else "max_tokens")
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "missing_messages", "'messages' must be a non-empty list with one user message", param="messages")
    images, texts = [], []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict) or message.get("role") != "user":
            role = message.get("role") if isinstance(message, dict) else None
            raise ApiError(400, "unsupported_message", f"{where}: only user messages are supported (DeepSeek-OCR has no "
                           f"system prompt or conversation), got role {role!r}", param=where)
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
            continue
        if not isinstance(content, list):
            raise ApiError(400, "invalid_content", f"{where}.content must be a string or a list of parts", param=f"{where}.content")
        for j, part in enumerate(content):
            at = f"{where}.content[{j}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                texts.append(part.get("text") or "")
            elif kind == "image_url":
                image_url = part.get("image_url")
                url = image_url.get("url") if isinstance(image_url, dict) else image_url
                images.append((url, f"{at}.image_url"))
            else:
                raise ApiError(400, "unsupported_content", f"{at}: part type {kind!r} is not supported (text, image_url)", param=at)
    if not images:
        raise ApiError(400, "missing_image_url", "the user message has no image_url part; add one "
                       '({"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}})', param="messages")
    if len(images) > 1:
        raise ApiError(400, "too_many_images", f"{len(images)} images in one request; send one image per request "
                       "(or a PDF to POST /v1/ocr)", param="messages")
    url, param = images[0]
    image = image_from_url(url, serve_cfg, data_cfg, param)
    text = "\n".join(t for t in texts if t.strip())
    prompt = with_image_placeholder(text) if text else default_prompt
    return OcrRequest(model, [image], prompt, max_tokens, [None])


def parse_upload(data: bytes, filename: str, serve_cfg: ServeConfig, data_cfg: DataConfig, dpi: int) -> tuple[list[Image.Image], list[int | None]]:
    """An uploaded image or PDF -> its images and page numbers (None for an image)."""
    what = f"file {filename!r}" if filename else "file"
    if not data:
        raise ApiError(400, "empty_file", f"{what} is empty", param="file")
    if data.startswith(PDF_MAGIC):
        pages = pdf_pages(data, serve_cfg, data_cfg, dpi, what)
        return pages, list(range(1, len(pages) + 1))
    return [decode_image(data, data_cfg, what)], [None]
