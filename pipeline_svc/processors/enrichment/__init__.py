"""Deterministic enrichment processors (stage "enrichment"); importing registers them."""

from pipeline_svc.processors.enrichment import (
    add_tags,
    geo_hints,
    reverse_dns,
    service_extraction,
    site_environment,
)

__all__ = ["add_tags", "geo_hints", "reverse_dns", "service_extraction", "site_environment"]
