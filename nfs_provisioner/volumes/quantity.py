"""Kubernetes resource quantities ("1Mi", "500M", "2e3", "1.5Gi") as whole bytes."""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

from nfs_provisioner.errors import Permanent

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1), "k": Decimal(10**3),
            "M": Decimal(10**6), "G": Decimal(10**9), "T": Decimal(10**12), "P": Decimal(10**15),
            "E": Decimal(10**18)}
_QUANTITY = re.compile(r"([+-]?[0-9.]+)([eE][+-]?[0-9]+|[KMGTPE]i|[numkMGTPE]?)")
MAX_BYTES = 2**63 - 1


class InvalidQuantity(Permanent, ValueError):
    pass


def to_bytes(value: str) -> int:
    """Bytes, rounded up, as Kubernetes would for a storage request; raises InvalidQuantity."""
    m = _QUANTITY.fullmatch(value.strip())
    if not m:
        raise InvalidQuantity(f"{value!r} is not a Kubernetes quantity")
    number, suffix = m.groups()
    try:
        n = Decimal(number)
        if suffix in _BINARY:
            n = n * _BINARY[suffix]
        elif suffix[:1] in ("e", "E") and len(suffix) > 1:
            n = n * (Decimal(10) ** int(suffix[1:]))
        else:
            n = n * _DECIMAL[suffix]
    except (InvalidOperation, ValueError, OverflowError) as e:
        raise InvalidQuantity(f"{value!r} is not a Kubernetes quantity") from e
    if n < 0:
        raise InvalidQuantity(f"{value!r} is negative")
    if n > MAX_BYTES:
        raise InvalidQuantity(f"{value!r} is larger than any volume can be")
    return math.ceil(n)
