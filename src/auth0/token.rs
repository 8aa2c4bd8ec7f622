//! STUB: client-credentials token cache.
