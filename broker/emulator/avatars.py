"""Avatar images at QQ's avatar paths, so the broker's avatar proxy is testable locally.

Real avatars live on ``thirdqq.qlogo.cn/g?b=oidb&k=…&s=N`` and
``qzapp.qlogo.cn/qzapp/{appid}/{openid}/N`` (qq-connect.md §4). The emulator serves the
same paths on its own host; get_user_info still names the qlogo.cn hosts (fidelity), so a
test points ``figureurl`` here with the ``figureurl:<url>`` fault. Each request is logged
(endpoint ``avatar``) so tests can see whether the broker's cache spared QQ a fetch.
Not part of graph.qq.com, whose host serves no images.
"""

from __future__ import annotations

import hashlib
import struct
import zlib

from flask import Blueprint, Response, request

from broker.emulator.common import current_state

bp = Blueprint("qq_emulator_avatars", __name__)


def avatar_png(seed: str) -> bytes:
    """A valid 1x1 PNG whose colour depends on ``seed`` (one user, one picture)."""
    red, green, blue = hashlib.sha256(seed.encode("utf-8")).digest()[:3]

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)  # 1x1, 8-bit RGB
    pixels = zlib.compress(bytes([0, red, green, blue]))
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def _image(seed: str) -> Response:
    state = current_state()
    state.record("avatar", request.method, request.path, request.args.to_dict(), list(request.args))
    response = Response(avatar_png(seed), mimetype="image/png")
    response.headers["Cache-Control"] = "max-age=2592000"
    return response


@bp.get("/g")
def thirdqq() -> Response:
    """``/g?b=oidb&k=<avatar key>&s=<size>`` (the 2019+ thirdqq form)."""
    return _image("thirdqq:" + request.args.get("k", ""))


@bp.get("/qzapp/<app_id>/<openid>/<int:size>")
@bp.get("/qqapp/<app_id>/<openid>/<int:size>")
def by_openid(app_id: str, openid: str, size: int) -> Response:
    """The older forms that carry the OpenID in the path."""
    return _image(f"{app_id}:{openid}")
