"""Pure, incremental feature math: the fold over invoice events and the vector as of a date."""

from streams.features.fold import Delta, EnterpriseState, apply_invoice, fold_all, invoice_delta
from streams.features.names import classify_name
from streams.features.vector import month_index, to_sequence, to_vector

__all__ = [
    "Delta",
    "EnterpriseState",
    "apply_invoice",
    "classify_name",
    "fold_all",
    "invoice_delta",
    "month_index",
    "to_sequence",
    "to_vector",
]
