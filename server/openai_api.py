"""OpenAI-compatible transcription: ``POST /v1/audio/transcriptions`` and ``GET /v1/models``.

Multipart fields: ``file`` (required), ``model`` (any name: this server has one English model and
answers with it; ``GET /v1/models`` lists it), ``language`` (``en``/``english`` or absent; others are
refused), ``prompt`` and ``temperature`` (accepted, ignored: the model takes no prompt and decodes
greedily), ``response_format`` (``json`` default, ``text``, ``srt``, ``vtt``, ``verbose_json``),
``timestamp_granularities[]`` (``segment``; ``word`` is refused: the model has no word timings), ``stream``
(``true``: server-sent events ``transcript.text.delta`` per segment, then ``transcript.text.done``).
Credentials: the same as streams (OpenAI SDKs send ``Authorization: Bearer KEY``). Errors use OpenAI's
shape: ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import json
import logging
import time

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from .auth import find_credential
from .protocol.errors import ProtocolError
from .transcribe import (UnsupportedFormat, decode_in_thread, full_text, speech_segments, to_srt, to_vtt,
                         transcribe_segments, verbose)

log = logging.getLogger("voxserve.openai")
MODEL_ID = "moonshine-base-en"
FORMATS = ("json", "text", "srt", "vtt", "verbose_json")


def oai_error(status: int, message: str, code: str, param: str | None = None,
              kind: str = "invalid_request_error") -> JSONResponse:
    headers = {"www-authenticate": 'Bearer realm="voxserve"'} if status == 401 else None
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status, headers=headers)


def routes(vox):
    from starlette.routing import Route

    settings = vox.settings

    def authorize(request: Request):
        """The principal, or an error response."""
        try:
            principal = vox.auth.authenticate(find_credential(request.headers, (), request.query_params))
        except ProtocolError as err:
            return None, oai_error(401, err.message, "unauthorized", kind="authentication_error")
        if not principal.allows("asr"):
            return None, oai_error(403, "this credential may not use speech recognition", "forbidden",
                                   kind="permission_error")
        return principal, None

    async def models(request: Request) -> Response:
        _, denied = authorize(request)
        if denied:
            return denied
        data = [{"id": MODEL_ID, "object": "model", "created": int(vox.started_at), "owned_by": "voxserve"}] \
            if "asr" in vox.stages else []
        return JSONResponse({"object": "list", "data": data})

    async def transcriptions(request: Request) -> Response:
        principal, denied = authorize(request)
        if denied:
            return denied
        stage = vox.stages.get("asr")
        if stage is None:
            return oai_error(404, "this server was started without the asr pipeline", "model_not_found", "model")
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > settings.max_upload_bytes + 65536:
            return oai_error(413, f"upload of {length} bytes is over the limit of {settings.max_upload_bytes}",
                             "file_too_large", "file")
        try:
            form = await request.form(max_files=1, max_fields=20, max_part_size=settings.max_upload_bytes)
        except Exception as exc:                            # malformed multipart, part too large
            return oai_error(400 if "large" not in str(exc).lower() else 413,
                             f"could not read the multipart form: {exc}", "bad_request")
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            return oai_error(400, "a 'file' part with the audio is required", "missing_file", "file")
        fmt = str(form.get("response_format") or "json")
        if fmt not in FORMATS:
            return oai_error(400, f"response_format must be one of {', '.join(FORMATS)}", "bad_value",
                             "response_format")
        language = str(form.get("language") or "").lower()
        if language not in ("", "en", "english"):
            return oai_error(400, f"language {language!r} is not supported: the model ({MODEL_ID}) is English only",
                             "unsupported_language", "language")
        granularities = [str(g) for g in form.getlist("timestamp_granularities[]")]
        if any(g not in ("segment",) for g in granularities):
            return oai_error(400, "only segment timestamps exist: the model has no word timings",
                             "unsupported_granularity", "timestamp_granularities[]")
        stream = str(form.get("stream") or "false").lower() in ("true", "1")
        data = await upload.read()
        await upload.close()
        if len(data) > settings.max_upload_bytes:
            return oai_error(413, f"file of {len(data)} bytes is over the limit of {settings.max_upload_bytes}",
                             "file_too_large", "file")
        if not data:
            return oai_error(400, "the file is empty", "empty_file", "file")
        t0 = time.perf_counter()
        try:
            audio = await decode_in_thread(data)
        except UnsupportedFormat as exc:
            return oai_error(400, exc.message, "unsupported_format", "file")
        duration = len(audio) / 16000
        if duration > settings.max_upload_s:
            return oai_error(413, f"audio of {duration:.0f} s is over the limit of {settings.max_upload_s:g} s",
                             "audio_too_long", "file")
        spans = speech_segments(audio)
        log.info("transcription", extra={"principal": principal.name, "audio_s": round(duration, 2),
                                         "segments": len(spans), "format": fmt, "stream": stream})
        if stream:
            async def events():
                done = []
                async for seg in transcribe_segments(stage, audio, spans):
                    if seg.text:
                        delta = seg.text if not done else " " + seg.text
                        done.append(seg)
                        yield f"data: {json.dumps({'type': 'transcript.text.delta', 'delta': delta})}\n\n"
                yield f"data: {json.dumps({'type': 'transcript.text.done', 'text': full_text(done)})}\n\n"
            return StreamingResponse(events(), media_type="text/event-stream",
                                     headers={"cache-control": "no-store"})
        segments = [seg async for seg in transcribe_segments(stage, audio, spans)]
        took = time.perf_counter() - t0
        headers = {"x-audio-seconds": f"{duration:.3f}", "x-processing-seconds": f"{took:.3f}"}
        if fmt == "text":
            return PlainTextResponse(full_text(segments) + "\n", headers=headers)
        if fmt == "srt":
            return PlainTextResponse(to_srt(segments), media_type="application/x-subrip", headers=headers)
        if fmt == "vtt":
            return PlainTextResponse(to_vtt(segments), media_type="text/vtt", headers=headers)
        if fmt == "verbose_json":
            return JSONResponse(verbose(segments, duration), headers=headers)
        return JSONResponse({"text": full_text(segments)}, headers=headers)

    return [Route("/v1/audio/transcriptions", transcriptions, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"])]
