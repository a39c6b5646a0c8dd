"""The feature schema: the one source of feature names and column order.

Everything that builds or reads a feature vector (the streaming fold, the batch
computation, the model bundle) goes through these tuples, and a bundle records
:func:`schema_hash` so that a model is never fed columns in another order.

Examples
--------
>>> len(schema_hash()) == 16
True
>>> "sales_growth" in NUMERIC_FEATURES
True
"""

from __future__ import annotations

import hashlib
import json
from typing import Final

SCHEMA_VERSION: Final = 1

#: Numeric invoice features, as produced by ``streams.features.to_vector``.
#: Windows are trailing twelve-month blocks ending with the as-of month:
#: ``y0`` = the last 12 months, ``y1`` = the 12 before, ``y2`` = the 12 before that.
NUMERIC_FEATURES: Final[tuple[str, ...]] = (
    # operating (paper 004 table 1, "operating cost")
    "sales_y0",
    "cost_y0",
    "profit_y0",
    "margin_y0",
    "sales_growth",
    "cost_growth",
    "profit_growth",
    "avg_sales_growth",
    "avg_cost_growth",
    "avg_profit_growth",
    "income_growth",
    # enterprise credit (table 1, "enterprise credit")
    "n_valid",
    "n_void",
    "n_return",
    "void_rate",
    "return_rate",
    "n_valid_out",
    "n_void_out",
    "n_return_out",
    "void_rate_out",
    "return_rate_out",
    "void_rate_in",
    "return_rate_in",
    "return_amount_share_out",
    # enterprise scale (table 1, "enterprise scale")
    "n_invoices",
    "n_out",
    "n_in",
    "log_sales_y0",
    "log_cost_y0",
    # counterparties
    "n_buyers",
    "n_sellers",
    "top_buyer_share",
    "top_seller_share",
    # stability and activity
    "sales_cv_12m",
    "sales_cv_24m",
    "active_months_share_12m",
    "months_since_first",
    "months_since_last",
)

#: Categorical features read from the enterprise name.
CATEGORICAL_FEATURES: Final[tuple[str, ...]] = ("industry", "legal_form")

INDUSTRIES: Final[tuple[str, ...]] = (
    "transport_warehousing_postal",
    "information_software_it",
    "other_services",
    "agriculture_forestry_fishery",
    "manufacturing",
    "construction",
    "real_estate",
    "wholesale_retail",
    "leasing_business_services",
    "unknown",
)

LEGAL_FORMS: Final[tuple[str, ...]] = (
    "individual_business",
    "firm",
    "cooperative",
    "head_office",
    "limited_company",
    "limited_company_branch",
    "limited_liability_company",
    "welfare_institute",
    "business_department",
    "chain_company_branch",
    "branch",
    "other",
)

RATINGS: Final[tuple[str, ...]] = ("A", "B", "C", "D")

#: Monthly channels of the invoice-history sequence fed to the rating CNN.
SEQUENCE_CHANNELS: Final[tuple[str, ...]] = (
    "log_sales",
    "log_cost",
    "log_n_out",
    "log_n_in",
    "void_share",
    "return_share",
)
SEQUENCE_MONTHS: Final = 24


def schema_dict() -> dict[str, object]:
    """The schema as plain JSON-able data (what a bundle manifest stores)."""
    return {
        "version": SCHEMA_VERSION,
        "numeric": list(NUMERIC_FEATURES),
        "categorical": list(CATEGORICAL_FEATURES),
        "industries": list(INDUSTRIES),
        "legal_forms": list(LEGAL_FORMS),
        "ratings": list(RATINGS),
        "sequence_channels": list(SEQUENCE_CHANNELS),
        "sequence_months": SEQUENCE_MONTHS,
    }


def schema_hash() -> str:
    """A short, stable hash of :func:`schema_dict`."""
    blob = json.dumps(schema_dict(), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
