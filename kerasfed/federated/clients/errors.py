"""The errors raised for clients' data that kerasfed cannot use.

They are ``kerasfed.errors.DataError`` and ``DataTypeError`` (the same kind of
mistake as bad data given to ``fit_distributed``), under their older names.
"""

from __future__ import annotations

from kerasfed.errors import ClientDataError, ClientDataTypeError  # noqa: F401  (defined with the family)
