import base64
import hashlib
import hmac


def image_url(key: str, pipeline: str, source: str) -> str:
    """The path of a pixelmesh image URL: /img/<signature>/<pipeline>/<source>."""
    signed = f"/{pipeline}/{source}"
    mac = hmac.new(key.encode(), signed.encode(), hashlib.sha256).digest()
    signature = base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    return f"/img/{signature}{signed}"


def url_source(url: str) -> str:
    """An http(s) URL as an image URL's source."""
    return "url/" + base64.urlsafe_b64encode(url.encode()).rstrip(b"=").decode()
