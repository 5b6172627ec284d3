"""Access tokens at rest: Fernet encryption with keys from TOKEN_ENCRYPTION_KEY (rotation-ready).

The variable holds one or more Fernet keys, comma-separated, newest first: new tokens are
encrypted with the first, any of them decrypts (MultiFernet), so keys rotate without downtime.
"""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from config.logging import register_secret


class SecretsError(RuntimeError):
    """The encryption key is missing or wrong: tokens cannot be stored or read."""


def new_key() -> str:
    return Fernet.generate_key().decode()


class TokenBox:
    def __init__(self, keys: str) -> None:
        parts = [k.strip() for k in keys.split(",") if k.strip()]
        if not parts:
            raise SecretsError(
                "TOKEN_ENCRYPTION_KEY is not set: access tokens are encrypted at rest. "
                "Generate one with `tiktok-sync keygen` and set it for every worker and the CLI."
            )
        try:
            self._fernet = MultiFernet([Fernet(k.encode()) for k in parts])
        except (ValueError, TypeError):
            raise SecretsError(
                "TOKEN_ENCRYPTION_KEY is not a valid Fernet key (32 url-safe base64 bytes); "
                "generate one with `tiktok-sync keygen`"
            ) from None

    def encrypt(self, token: str) -> str:
        register_secret(token)
        return self._fernet.encrypt(token.encode()).decode()

    def decrypt(self, blob: str) -> str:
        try:
            token = self._fernet.decrypt(blob.encode()).decode()
        except InvalidToken:
            raise SecretsError(
                "cannot decrypt a stored access token: TOKEN_ENCRYPTION_KEY differs from the key "
                "it was stored with (add the old key after the new one, comma-separated)"
            ) from None
        register_secret(token)
        return token
