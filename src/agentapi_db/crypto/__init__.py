"""Token encryption in the application process.

* :mod:`.sealed`: the ``ag1`` format (AES-256-CBC + HMAC-SHA256, encrypt-then-MAC,
  subkeys derived per key, key id in the ciphertext), which the seed's SQL
  functions ``encrypt_token`` / ``decrypt_token`` (pgcrypto) read and write too;
* :mod:`.legacy`: a reader for the previous format (pgcrypto OpenPGP, base64), so
  old values still open without their key ever being sent to PostgreSQL;
* :mod:`.ring`: :class:`KeyRing`, the keys one process encrypts and decrypts with.

No function here talks to PostgreSQL: keys and plaintext stay in this process.
"""

from agentapi_db.crypto.ring import KeyRing
from agentapi_db.crypto.sealed import FORMAT_PREFIX, is_sealed, key_id_of, seal

__all__ = ["FORMAT_PREFIX", "KeyRing", "is_sealed", "key_id_of", "seal"]
