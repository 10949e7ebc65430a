"""Redaction processors (stage "redaction"); importing this package registers them."""

from pipeline_svc.processors.redaction import (
    drop_fields,
    hash_fields,
    mask_patterns,
    safety_validator,
)

__all__ = ["drop_fields", "hash_fields", "mask_patterns", "safety_validator"]
