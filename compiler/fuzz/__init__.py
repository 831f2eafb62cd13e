"""The fuzz campaign: seeded random models, built and simulated, every output compared with the
reference bit for bit (``python -m compiler fuzz``, docs/verification.md)."""

from .campaign import CampaignResult, run_campaign
from .generate import FuzzModel, generate_model

__all__ = ["CampaignResult", "run_campaign", "FuzzModel", "generate_model"]
